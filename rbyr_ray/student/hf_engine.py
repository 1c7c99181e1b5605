"""The `hf` exam engine: transformers `generate`, batched with left padding, stopping at the blank line.

    engine = HFEngine(model_dir, dtype="bfloat16", threads=2)
    gens = engine.generate([ids_a, ids_b], SamplingSpec(greedy=True, max_new_tokens=48), seeds=[0, 1])

bf16 on CPU: greedy generation is ~1.2x faster than float32 on AVX-512-bf16 machines (ENVIRONMENT.md).
"""

from __future__ import annotations

import logging

from .engines import Generation, SamplingSpec, cut_at_stop
from .models import load_model, load_tokenizer

log = logging.getLogger(__name__)


class HFEngine:
    name = "hf"

    def __init__(self, model_dir: str, *, dtype: str = "bfloat16", device: str | None = None,
                 threads: int | None = None):
        import torch

        if threads:
            # Ray sets OMP_NUM_THREADS=1 in actors; generation wants the replica's whole CPU share.
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_dir, padding_side="left")
        self.model = load_model(model_dir, dtype, device=self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id
        # eos of the tokenizer and of the generation config (chat models often end turns differently).
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = sorted({self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})

    def generate(self, prompts: list[list[int]], spec: SamplingSpec, seeds: list[int]) -> list[Generation]:
        import torch

        if not prompts:
            return []
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, ids in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids):] = 1
        kwargs = {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        if not spec.is_greedy:
            kwargs = {"do_sample": True, "temperature": spec.temperature, "top_k": spec.top_k or None, "top_p": None}
            torch.manual_seed(seeds[0])  # one generator per batch: reproducible for a given batching
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                max_new_tokens=spec.max_new_tokens, stop_strings=[spec.stop], tokenizer=self.tokenizer,
                pad_token_id=self.pad_id, eos_token_id=self.eos_ids, **kwargs)
        new_tokens = out[:, width:].tolist()
        gens = []
        for row in new_tokens:
            # Finished rows are padded with pad (= eos for SmolLM2), so the first eos ends the real output;
            # it is not counted (vLLM counts the same way, see vllm_worker.py).
            n = next((i for i, tok in enumerate(row) if tok in self.eos_ids), len(row))
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            gens.append(Generation(cut_at_stop(text, spec.stop), n))
        return gens

    def close(self) -> None:
        self.model = None
