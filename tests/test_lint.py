"""`snakemake --lint` reports only the lints the project keeps on purpose."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Deliberate, with the reason:
DELIBERATE = (
    # one venv for every rule (make setup): no per-rule conda env or container
    "Specify a conda environment or container for each rule.",
    # {PY} is the interpreter running Snakemake (the project venv); as a param it would rerun every job
    "Shell command directly uses variable PY from outside of the rule",
    # directory arguments (--out, --data, --policy) on the shared filesystem a SLURM cluster has
    "is a prefix of input or output file but hardcoded",
    # each rule file keeps its helper functions beside the rules they serve
    "Mixed rules and functions in same snakefile.",
)


def test_snakemake_lint_has_only_deliberate_lints():
    snakemake = Path(sys.executable).with_name("snakemake")
    out = subprocess.run([str(snakemake), "--lint", "text"], cwd=REPO, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    titles = re.findall(r"^\s+\* (.+?):?$", text, flags=re.M)
    assert titles, text[-2000:]  # the linter ran and reported (the deliberate lints at least)
    unexpected = sorted({t for t in titles if not any(d in t for d in DELIBERATE)})
    assert unexpected == [], "\n".join(unexpected)
