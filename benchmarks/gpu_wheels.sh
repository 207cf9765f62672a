#!/usr/bin/env bash
# Wheels benchmarks/gpu_check.sh needs on the lent GPU machine, which has PyTorch, transformers,
# tokenizers, safetensors, tqdm and PyYAML but not DeepSpeed, pydantic or jsonschema, and cannot
# download. Run here (PyPI reachable) before the device call; the versions are this venv's, so the
# check runs the code the tests ran. Puts them in .whl/ (ignored by git; carried with `carry: [".whl"]`).
#   bash benchmarks/gpu_wheels.sh        # then: device run, carry .whl, command: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=".venv/bin/pip"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
version() { "$PIP" show "$1" | sed -n 's/^Version: //p'; }
# the device's Python is 3.12 on x86-64 (KINDS.md); pure-Python wheels and cp312 manylinux builds
PLAT=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
for pkg in hjson pydantic annotated-types typing-inspection jsonschema jsonschema-specifications referencing; do
  "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d .whl "$pkg==$(version "$pkg")"
done
for pkg in pydantic-core rpds-py; do
  "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d .whl "${pkg}==$(version "$pkg")"
done
# DeepSpeed ships as a source archive: build its pure-Python wheel here (its ops compile on first use there)
"$PIP" wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
ls -la .whl
du -sh .whl
