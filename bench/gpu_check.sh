#!/usr/bin/env bash
# One prepared GPU check (issue 8): matmul peak, the training step with the reflection loss, transformers
# exam generation; prints a markdown table. Needs torch, transformers and peft only (no Ray, no vLLM, no
# network): the models are random-init SmolLM2-shaped Llamas built in the script.
#
#   bash bench/gpu_check.sh            # full run on an NVIDIA GPU, about 2.5 minutes on an H200
#   bash bench/gpu_check.sh --smoke    # tiny shapes, any CPU, under a minute
#   bash bench/gpu_check.sh --help     # the knobs (--models, --batch, --seq, --steps, --budget-s, --out ...)
#
# Results also go to --out (default: $OUT if set, else runs/gpu_check): gpu_check.md, .json, .log.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import torch, transformers, peft' 2>/dev/null; then
  PY=.venv/bin/python
else PY=python3; fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_VERBOSITY=${TRANSFORMERS_VERBOSITY:-error}
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
exec "$PY" bench/gpu_check.py "$@"
