"""Stage: data preparation. Writes one JSONL of records per split into --out.

- a synthetic testbed (`task.name` in `registry.TESTBEDS`: arith, countdown), generated from
  fixed seeds by its module. Eval splits are drawn first and excluded from train, so no test
  problem is ever trained on; `ood` is harder (arith: the longer `ood_chain_len`; countdown:
  `ood_n_numbers`). `task.arith.answer_format` (default "value") picks the answer line:
  the final value, or in "longform" the running value after every operation ("7 4 9"); it
  changes only how answers and solutions are written, not which problems are drawn, and
  value-format data are byte-identical to data made before the option existed.
- otherwise: each split comes from a real dataset through `pipeline.loaders` (hub id or a
  local file), converted to the common record schema.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .registry import is_testbed, testbed_module
from .utils import stage_parser, start_stage, write_json, write_jsonl

log = logging.getLogger("pipeline.data_prep")
SPLITS = ("train", "val", "test", "ood")


def testbed_splits(task_cfg: dict, seed: int) -> dict[str, list[dict]]:
    module = testbed_module(task_cfg)
    block = task_cfg[task_cfg["name"]]
    spec, ood_spec = module.specs(block)  # arith: both carry answer_format
    sizes = block["sizes"]
    out: dict[str, list[dict]] = {}
    taken: set[str] = set()
    for i, split in enumerate(("test", "val", "ood", "train")):
        records = module.generate_split(int(sizes[split]), ood_spec if split == "ood" else spec,
                                        seed=seed * 7919 + i, split=split, exclude=taken)
        taken |= {r["problem"] for r in records}
        out[split] = records
    return out


def real_splits(task_cfg: dict) -> dict[str, list[dict]]:
    from .loaders import load_records

    out = {}
    for split, src in task_cfg["sources"].items():
        out[split] = load_records(src["name"], path=src.get("path"), split=src["split"],
                                  limit=src.get("limit"), hub_config=src.get("hub_config"))
        for r in out[split]:
            r["split"] = split
    return out


def main(argv=None) -> None:
    p = stage_parser(__doc__)
    p.add_argument("--out", required=True, help="output directory for <split>.jsonl")
    args, cfg = start_stage(p, argv)
    task_cfg, seed = cfg["task"], int(cfg["seed"])
    splits = testbed_splits(task_cfg, seed) if is_testbed(task_cfg) else real_splits(task_cfg)
    out = Path(args.out)
    summary = {}
    for split, records in splits.items():
        write_jsonl(out / f"{split}.jsonl", records)
        summary[split] = len(records)
        log.info("%s: %d records", split, len(records))
    write_json(out / "summary.json", summary)


if __name__ == "__main__":
    main()
