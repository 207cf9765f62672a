"""The SLURM profile (slurm/config.yaml) turns each rule's `resources.<rule>` config into the
exact sbatch flags, for GPU presets too, without a cluster.

Snakemake runs for real with `--profile slurm` and the snakemake-executor-plugin-slurm builds
and issues the sbatch call itself; only the external boundary is faked: `sbatch` on PATH
records its argv and refuses the job, and `sinfo` / `sacct` / `sacctmgr` answer as a cluster
without accounting would. The real cluster run is tests/slurm/run_local_slurm.sh
(tests/test_slurm_local.py).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import data_splits, load_preset, rl_reward_model

REPO = Path(__file__).resolve().parent.parent
GPU_FIXTURE = REPO / "tests" / "data" / "slurm_gpu.yaml"
PAPER_PRESETS = sorted((REPO / "config").glob("paper_*.yaml"))
DEFAULT_PARTITION = "default_part"  # what the fake sinfo marks as the cluster's default

FAKE_SBATCH = f"""#!{sys.executable}
# fake sbatch: records its argv (one JSON list per line) and refuses the job
import json, os, sys
with open(os.environ["FAKE_SBATCH_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.stderr.write("fake sbatch: submission recorded, not run\\n")
sys.exit(1)
"""
FAKE_TOOLS = {
    "sbatch": FAKE_SBATCH,
    "sinfo": f"#!/bin/sh\nprintf 'PARTITION\\n{DEFAULT_PARTITION}*\\n'\n",  # `sinfo -o %P`: the default partition
    "sacctmgr": "#!/bin/sh\nprintf '%s\\n' $FAKE_SLURM_ACCOUNTS\n",           # the accounts the user may charge
    **{t: f"#!/bin/sh\necho 'fake {t}: no cluster' >&2\nexit 1\n"
       for t in ("sacct", "squeue", "scontrol", "sshare", "srun", "scancel")},
}
SUBMIT_ONLY = {"--parsable", "--job-name", "--output", "--export", "--comment", "-D", "--wrap"}  # not resources


@pytest.fixture(scope="module")
def fake_slurm(tmp_path_factory) -> Path:
    bin_dir = tmp_path_factory.mktemp("fake_slurm_bin")
    for name, text in FAKE_TOOLS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def touch(path: Path, mtime: float, directory: bool = False) -> None:
    if directory:
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    os.utime(path, (mtime, mtime))


def prepare(workdir: Path, cfg: dict, with_sft: bool) -> None:
    """Stand-ins for the upstream outputs (data prep, optionally the SFT tiers), older than
    anything downstream, so the jobs under test are the ones ready to submit."""
    out = workdir / cfg["out_dir"]
    t = time.time() - 1000
    for split in data_splits(cfg):
        touch(out / "data" / f"{split}.jsonl", t)
    touch(out / "data" / "summary.json", t)
    if with_sft:
        for tier in cfg["sft"]["tiers"]:
            touch(out / "models" / "sft" / tier, t + 10, directory=True)
        touch(out / "models" / "sft" / "sft_metrics.json", t + 10)


def submit(fake_slurm: Path, workdir: Path, configfile: Path, cfg: dict, targets: list[str]) -> dict[str, list[str]]:
    """Run `snakemake --profile slurm` on `targets`; the sbatch argv of each submitted job,
    keyed by the rule (the plugin's --comment is rule_<rule>[_wildcards_...])."""
    log = workdir / "sbatch_argv.jsonl"
    accounts = sorted({r["slurm_account"] for r in cfg["resources"].values() if "slurm_account" in r})
    env = {**os.environ, "PATH": f"{fake_slurm}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_LOG": str(log),
           "FAKE_SLURM_ACCOUNTS": " ".join(accounts)}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--profile", str(REPO / "slurm"), "--configfile", str(configfile), "--retries", "0",
           "--slurm-init-seconds-before-status-checks", "1", "--", *targets]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert log.exists(), f"nothing was submitted:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "fake sbatch: submission recorded" in proc.stdout + proc.stderr  # the plugin ran our sbatch
    calls = {}
    for line in log.read_text().splitlines():
        argv = json.loads(line)
        comment = argv[argv.index("--comment") + 1]
        calls[re.match(r"rule_(\w+?)(_wildcards_.*)?$", comment).group(1)] = argv
    return calls


def resource_flags(argv: list[str]) -> dict[str, str | bool]:
    """sbatch's resource flags as {flag: value} (True for a bare flag such as --exclusive)."""
    flags, i = {}, 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if name.startswith("-") and not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value, i = argv[i + 1], i + 1
        if name not in SUBMIT_ONLY:
            flags[name] = value if (eq or value) else True
        i += 1
    return flags


def expected_flags(cfg: dict, rule: str) -> dict[str, str | bool]:
    """What the profile should ask SLURM for: resources.<rule> over resources.default."""
    r = {**cfg["resources"]["default"], **cfg["resources"].get(rule, {})}
    want = {"-p": r.get("slurm_partition", DEFAULT_PARTITION), "-t": str(r["runtime"]), "--mem": str(r["mem_mb"]),
            "--cpus-per-task": str(r["threads"])}
    if r.get("gpu", 0) > 0:
        want.update({"--gpus": str(r["gpu"]), "--nodes": "1"})  # all of a job's GPUs on one node
    else:
        want["--ntasks"] = "1"
    for key, flag in (("slurm_account", "-A"), ("constraint", "-C"), ("qos", "--qos")):
        if key in r:
            want[flag] = r[key]
    want.update(resource_flags(r.get("slurm_extra", "").split()))  # verbatim
    return want


def check_config(fake_slurm: Path, tmp_path: Path, configfile: Path) -> dict[str, list[str]]:
    cfg = load_preset(configfile)
    calls = {}
    seed = cfg["rl"]["seeds"][0]
    algos = [a for a in cfg["rl"]["algos"] if rl_reward_model(cfg, a) is None]  # ready once data (and policy) exist
    testbed = cfg["task"]["name"] == "arith"
    base = cfg["rl"]["base_policy"]
    out = cfg["out_dir"].rstrip("/")
    targets = [f"{out}/eval/base/s{seed}.json", f"{out}/rollouts/{cfg['rollouts']['policy']}/{cfg['rollouts']['split']}.jsonl"]
    if algos:
        targets.append(f"{out}/rl/{algos[0]}/s{seed}/summary.json")
    ready = tmp_path / "downstream"
    prepare(ready, cfg, with_sft=testbed)
    calls.update(submit(fake_slurm, ready, configfile, cfg, targets))
    if testbed or base not in cfg.get("policies", {}):  # the SFT job itself
        first = tmp_path / "sft"
        prepare(first, cfg, with_sft=False)
        calls.update(submit(fake_slurm, first, configfile, cfg, [f"{out}/models/sft/sft_metrics.json"]))
    assert {"evaluate", "rollouts"} | ({"rl"} if algos else set()) <= set(calls), sorted(calls)
    for rule, argv in calls.items():
        assert resource_flags(argv) == expected_flags(cfg, rule), (configfile.name, rule, argv[:-1])
    return calls


def test_gpu_fixture_sbatch_flags(fake_slurm, tmp_path):
    calls = check_config(fake_slurm, tmp_path, GPU_FIXTURE)
    assert set(calls) == {"sft", "rl", "evaluate", "rollouts"}
    # the exact sbatch calls, spelled out once (expected_flags derives them for the presets)
    assert resource_flags(calls["rl"]) == {"-p": "gpu", "-t": "2880", "--qos": "long", "--mem": "480000",
                                           "--nodes": "1", "--cpus-per-task": "32", "--exclusive": True,
                                           "--gpus": "8"}
    assert resource_flags(calls["sft"]) == {"-A": "prm_lab", "-p": "gpu", "-t": "720", "-C": "a100", "--mem": "256000",
                                            "--nodes": "1", "--cpus-per-task": "16", "--gpus": "4"}
    assert resource_flags(calls["rollouts"])["--gpus"] == "2"
    # the job inside the allocation is the plugin's jobstep for exactly that rule
    assert "--target-jobs 'rl:algo=rloo,seed=0'" in calls["rl"][-1] and "--executor slurm-jobstep" in calls["rl"][-1]


@pytest.mark.parametrize("preset", PAPER_PRESETS, ids=[p.stem for p in PAPER_PRESETS])
def test_paper_preset_sbatch_flags(fake_slurm, tmp_path, preset):
    check_config(fake_slurm, tmp_path, preset)


def test_gpu_jobs_launch_over_all_their_gpus(tmp_path):
    """Training rules with gpu > 1 start one DeepSpeed rank per GPU through torchrun; vLLM
    sampling rules run tensor parallel over the job's GPUs; one GPU stays a plain process."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n", "-p",
         "--configfile", str(GPU_FIXTURE), "--", "results/rl/rloo/s0/summary.json", "results/eval/base/s0.json",
         "results/rollouts/medium/train.jsonl", "results/rm/orm/metrics.json"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    shell = {m.group(1): m.group(0) for m in re.finditer(r"-m (?:torch\.distributed\.run .*? -m )?pipeline\.(\w+) .*",
                                                         proc.stdout)}
    py = re.escape(sys.executable)
    assert re.search(py + r" -m torch\.distributed\.run --standalone --nnodes 1 --nproc-per-node 8 -m pipeline\.rl ",
                     proc.stdout)
    assert re.search(py + r" -m torch\.distributed\.run --standalone --nnodes 1 --nproc-per-node 4 -m pipeline\.sft ",
                     proc.stdout)
    assert re.search(py + r" -m pipeline\.train_rm ", proc.stdout)  # gpu: 1, one process
    assert re.search(py + r" -m pipeline\.data_prep ", proc.stdout)  # gpu: 0
    tp = {stage: json.loads(re.search(r"--cfg '(\{.*?\})' ", shell[stage]).group(1))["sampling"].get(
        "tensor_parallel_size") for stage in ("rollouts", "evaluate", "rl")}
    assert tp == {"rollouts": 2, "evaluate": 1, "rl": None}
    backend = {stage: json.loads(re.search(r"--cfg '(\{.*?\})' ", shell[stage]).group(1))["sampling"]["backend"]
               for stage in ("rollouts", "rl")}
    assert backend == {"rollouts": "vllm", "rl": "hf"}  # 8-rank RL samples from its in-memory policy on every rank


def test_profile_keys():
    """The profile's own settings: the executor, retries for preempted/cancelled jobs, defaults."""
    prof = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["retries"] >= 1 and prof["jobs"] >= 1
    assert prof["latency-wait"] >= 60 and {"mem_mb", "runtime"} <= set(prof["default-resources"])
