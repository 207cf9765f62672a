#!/usr/bin/env bash
# GPU proof in one command (issue 16): the reward-model and policy ZeRO-3 bf16 steps through
# engine.train_batch at real width, vLLM sampling and weight sync where vLLM imports; throughput and
# peak memory to gpu_check.json (benchmarks/gpu_check.py says what each part does).
#   On the lent GPU machine: bash benchmarks/gpu_wheels.sh here first, then run
#     bash benchmarks/gpu_check.sh            with carry [".whl"]  (JSON in $OUT)
#   Anywhere, no GPU:  bash benchmarks/gpu_check.sh --dry     (toy width, CPU, the same code; CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${OUT:-results/gpu_check}"
if [ -d .whl ] && [ "${1:-}" != "--dry" ]; then  # the device has no DeepSpeed / pydantic / jsonschema
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -x .venv/bin/python ] && [ "${1:-}" = "--dry" ]; then PY=.venv/bin/python; else PY=python3; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout 480 "$PY" benchmarks/gpu_check.py --out "$OUTDIR/gpu_check.json" "$@"
