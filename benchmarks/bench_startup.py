"""What a stage process pays outside its work (interpreter, imports, shutdown), with the garbage
collector held through the imports as `python -m pipeline.<stage>` does (pipeline/__init__.py)
and without, side by side in one run.

    python benchmarks/bench_startup.py [--stages pipeline.evaluate pipeline.rl.train] [--reps 5]

Each repetition starts, for every stage module, two fresh interpreters that import the module,
run the stage's logging set-up (where a stage ends its import phase) and exit: one whose
argv[0] is "-m" while the package imports, as under `python -m` (collector held, then frozen),
and one without (the collector on throughout, as before issue 17's change). The two alternate,
so a machine that slows down mid-run slows both. Prints a Markdown table of median wall times
(process start to exit, measured from outside) for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """\
import sys
if {held}:
    sys.argv[0] = "-m"  # what `python -m pipeline.<stage>` shows while the package imports
import pipeline
import {module}
from pipeline.utils import setup_logging
setup_logging()
"""


def wall_s(module: str, held: bool) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", PROBE.format(held=held, module=module)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", default=["pipeline.evaluate", "pipeline.rl.train", "pipeline.data_prep"],
                   help="stage modules to import")
    p.add_argument("--reps", type=int, default=5, help="pairs of processes per stage")
    args = p.parse_args(argv)
    print("| stage module | collector on (s, median) | held, then frozen (s, median) | saved per process (s) |")
    print("|---|---:|---:|---:|")
    for module in args.stages:
        wall_s(module, True)  # the first start reads the files from disk; not timed
        on, held = [], []
        for _ in range(args.reps):
            on.append(wall_s(module, False))
            held.append(wall_s(module, True))
        a, b = statistics.median(on), statistics.median(held)
        print(f"| {module} | {a:.2f} ({min(on):.2f}-{max(on):.2f}) | {b:.2f} ({min(held):.2f}-{max(held):.2f}) "
              f"| {a - b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
