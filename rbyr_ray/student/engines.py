"""What every exam engine shares: the sampling settings, one generation's result, and the factory.

An engine turns already-tokenized prompts into generations; the exam (exam.py) does the tokenizing,
the context check, the grading and the failure isolation, so the engines stay small and the two of
them produce exactly the same row schema.

    engine = make_engine("hf", "/path/to/hf-folder", dtype="bfloat16", max_model_len=2048)
    spec = SamplingSpec(greedy=True, max_new_tokens=48)
    [gen] = engine.generate([[17872, 42, 15876, 198]], spec, seeds=[0])
    gen.text, gen.n_tokens          # ("...", 48): the text up to the blank line, the tokens generated
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..tasks.prompts import STOP

ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class SamplingSpec:
    """Decoding settings shared by both engines. `greedy` (or temperature 0) ignores temperature/top_k."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 50  # 0 = no top-k filtering
    max_new_tokens: int = 96
    stop: str = STOP

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature <= 0


@dataclass(frozen=True)
class Generation:
    """One prompt's output: the text up to (not including) the stop, and how many tokens were generated."""

    text: str
    n_tokens: int


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], spec: SamplingSpec, seeds: list[int]) -> list[Generation]:
        """One Generation per prompt (token ids, no padding), in order. May raise for the whole batch."""
        ...

    def close(self) -> None:
        ...


def cut_at_stop(text: str, stop: str = STOP) -> str:
    """The rationale: the generated text up to the first stop string, trailing whitespace dropped.

    >>> cut_at_stop("3 + 4 = 7.\\nAnswer: 7\\n\\nQuestion: next")
    '3 + 4 = 7.\\nAnswer: 7'
    """
    return text.split(stop, 1)[0].rstrip()


def make_engine(name: str, model_dir: str, *, dtype: str = "bfloat16", max_model_len: int = 2048,
                device: str | None = None, threads: int | None = None, tensor_parallel_size: int = 1,
                gpu_memory_utilization: float = 0.85, seed: int = 0) -> Engine:
    """Build engine `name` ("hf" or "vllm") over an HF folder or a LoRA adapter folder."""
    if name == "hf":
        from .hf_engine import HFEngine

        return HFEngine(model_dir, dtype=dtype, device=device, threads=threads)
    if name == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, dtype=dtype, max_model_len=max_model_len, threads=threads,
                          tensor_parallel_size=tensor_parallel_size,
                          gpu_memory_utilization=gpu_memory_utilization, seed=seed)
    raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(ENGINES)}")
