"""Training throughput, all in one run, on whatever this machine is (CPU here; `--gpu` on a GPU machine):

1. the cost of reflection: tokens/s and s/item of the plain loop at lambda = 0 and lambda = 0.5
   (goal: lambda = 0.5 costs at most 2.2x per item: one anchor forward becomes anchor + pos/neg forwards);
2. Ray Train overhead: a single TorchTrainer worker against the same loop in one plain process, same model,
   items and batches, compared on time inside training steps (goal: ratio >= 0.9);
3. MFU = 6 * params * tokens/s / matmul peak, the peak measured here in the same run (goal >= 30%).

    .venv/bin/python bench/train.py [--items 48] [--steps 4] [--gpu]

`--memory`: peak resident memory per optimizer step against the tokens of its batch, in one process without Ray,
on the real student and gsm8k's longest questions (items as configs/cpu/gsm8k.yaml makes them: the dataset's worked
solution as the rationale, another phrasing as the positive, a wrong one as the negative), through the trainer's
own step (trainer.run_batch). key=value overrides set the memory keys (docs/memory.md):

    .venv/bin/python bench/train.py --memory [--items 24] [--steps 3] train.max_tokens_per_micro_batch=null \
        train.logits_chunk_tokens=0 [train.gradient_checkpointing=true] [--no-trim]

`--dropout`: what LoRA dropout costs on this machine. Two fresh LoRAs, at train.lora.dropout 0.05 (the default) and
0, train the same batches alternately through the trainer's step, at lambda = 0 and with the hinge (lambda = 1, each
item's negative through a second forward); it prints s/step for each and their ratio. On a CPU the dropout's random
masks (one per adapted module and forward) are a visible share of a step:

    .venv/bin/python bench/train.py --dropout [--items 48] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import torch

from rbyr_ray.config import ArithConfig, ExperimentConfig, TaskConfig, load_config
from rbyr_ray.student.models import load_tokenizer, resolve_model_dir
from rbyr_ray.tasks import gold_rationale, load_task
from rbyr_ray.tasks.arith import generate
from rbyr_ray.train import trainer
from rbyr_ray.train.data import build_train_items, collate
from rbyr_ray.train.objective import ReflectionObjective
from rbyr_ray.train.trainer import (
    autocast_dtype,
    build_model,
    item_length,
    plan_batches,
    run_batch,
    train_round,
)


def make_items(student: str, n: int, cfg: ExperimentConfig) -> pd.DataFrame:
    """Real items: two phrasings of the gold rationale as accepted teacher rationales, one wrong student rationale."""
    records = generate(ArithConfig(n_train=n // 2, n_test=1, seed=11)).train
    teacher = pd.DataFrame(
        [{"id": r.id, "sample": 0, "rationale": r.solution, "accepted": True} for r in records]
        + [{"id": r.id, "sample": 1, "rationale": f"Step by step: {r.solution}", "accepted": True} for r in records])
    mistakes = {r.id: [f"{r.solution[:-1]}3. So the result is wrong.\nAnswer: {r.answer}3"] for r in records}
    return build_train_items(teacher, mistakes, {r.id: r for r in records}, load_tokenizer(student), cfg.train,
                             answer_type="numeric", seed=0)


def gsm8k_items(student: str, n: int, cfg: ExperimentConfig) -> pd.DataFrame:
    """Real gsm8k items, the longest of the first 300 questions (what batches the trainer's memory must bound)."""
    records = [r for r in load_task(TaskConfig(name="gsm8k", train_limit=300)).train if gold_rationale("gsm8k", r)]
    rationale = {r.id: gold_rationale("gsm8k", r) for r in records}
    records = sorted(records, key=lambda r: -len(r.question + rationale[r.id]))[: (n + 1) // 2]
    teacher = pd.DataFrame(
        [{"id": r.id, "sample": 0, "rationale": rationale[r.id], "accepted": True} for r in records]
        + [{"id": r.id, "sample": 1, "rationale": f"Let us think step by step. {rationale[r.id]}", "accepted": True}
           for r in records])
    mistakes = {r.id: [f"{rationale[r.id].rsplit(' ', 1)[0]} 7.\nAnswer: 7"] for r in records}
    return build_train_items(teacher, mistakes, {r.id: r for r in records}, load_tokenizer(student), cfg.train,
                             answer_type="numeric", seed=0)


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Resident memory sampled every 2 ms by a thread (torch releases the GIL inside its kernels): the peak since
    the last reset, which ru_maxrss cannot give per step."""

    def __init__(self, every: float = 0.002):
        self.peak, self._every, self._stop = rss(), every, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.peak = max(self.peak, rss())

    def reset(self) -> None:
        self.peak = rss()

    def close(self) -> None:
        self._stop.set()


def memory_loop(student: str, items: list[dict], cfg: ExperimentConfig, steps: int, trim: bool) -> None:
    """The worker's step (trainer.run_batch, clip, AdamW) on one process: peak RSS per step against its tokens."""
    tcfg, rcfg = cfg.train, cfg.train.reflection
    if not trim:
        trainer.release_free_memory = lambda: None  # what the worker calls after each step
    torch.manual_seed(0)
    model = build_model(student, tcfg)
    objective = ReflectionObjective(model, rcfg.weight, rcfg.margin, rcfg.pooling, rcfg.kind, rcfg.beta,
                                    chunk_tokens=tcfg.logits_chunk_tokens)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=tcfg.lr)
    plan = plan_batches([str(i["id"]) for i in items], tcfg, world=1, seed=0,
                        lengths=[item_length(i, rcfg.kind) for i in items])
    pad_id = load_tokenizer(student).pad_token_id
    sampler = PeakRSS()
    print(f"model loaded: RSS {rss() / 2**30:.2f} GiB; attention {model.config._attn_implementation}; "
          f"max_tokens_per_micro_batch {tcfg.max_tokens_per_micro_batch}, logits_chunk_tokens "
          f"{tcfg.logits_chunk_tokens}, gradient_checkpointing {tcfg.gradient_checkpointing}, malloc_trim {trim}")
    objective.train()
    for step in range(steps):
        _, indices = plan[step % len(plan)]
        sampler.reset()
        started = time.perf_counter()
        torch.manual_seed(step)
        done = run_batch(objective, items, indices, tcfg, pad_id, torch.device("cpu"), None, seed=step)
        torch.nn.utils.clip_grad_norm_([p for p in objective.parameters() if p.requires_grad], tcfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss, micro, padded, tokens = done["lm_loss"], done["micro"], done["padded"], done["tokens"]
        del done
        trainer.release_free_memory()
        seconds = time.perf_counter() - started
        seqs = len(indices) * (3 if rcfg.weight > 0 and rcfg.kind == "triplet" else 2 if rcfg.weight > 0 else 1)
        print(f"step {step + 1}: {len(indices)} items ({seqs} sequences), {tokens} tokens, {sum(padded)} padded "
              f"in {micro} micro-batches (largest {max(padded)}); peak RSS {sampler.peak / 2**30:.2f} GiB, "
              f"after the step {rss() / 2**30:.2f} GiB; {seconds:.1f} s ({tokens / seconds:.0f} tok/s); "
              f"lm_loss {loss:.5f}", flush=True)
    sampler.close()


def dropout_cost(student: str, items: list[dict], cfg: ExperimentConfig, steps: int) -> None:
    """s/step of the trainer's step at LoRA dropout 0.05 and 0 on the same batches, alternately."""
    pad_id = load_tokenizer(student).pad_token_id
    for kind, weight in (("triplet", 0.0), ("hinge", 1.0)):
        tcfg = cfg.train.model_copy(deep=True)
        tcfg.reflection.kind, tcfg.reflection.weight, tcfg.reflection.margin = kind, weight, 0.1
        plan = plan_batches([str(i["id"]) for i in items], tcfg, world=1, seed=0,
                            lengths=[item_length(i, kind) for i in items])[: steps + 1]
        runs = {}
        for dropout in (0.05, 0.0):
            tcfg.lora.dropout = dropout
            torch.manual_seed(0)
            objective = ReflectionObjective(build_model(student, tcfg), weight, 0.1, kind=kind,
                                            chunk_tokens=tcfg.logits_chunk_tokens).train()
            optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=tcfg.lr)
            runs[dropout] = (objective, optimizer, tcfg.model_copy(deep=True))
        seconds = dict.fromkeys(runs, 0.0)
        for index, (_, indices) in enumerate(plan):
            for dropout, (objective, optimizer, run_cfg) in runs.items():
                started = time.perf_counter()
                run_batch(objective, items, indices, run_cfg, pad_id, torch.device("cpu"), None, seed=index)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if index > 0:  # the first batch warms up
                    seconds[dropout] += time.perf_counter() - started
        name = "lambda=0" if weight == 0 else "hinge, lambda=1"
        print(f"{name:<16} dropout 0.05: {seconds[0.05] / steps:.2f} s/step, dropout 0: {seconds[0.0] / steps:.2f} "
              f"s/step; ratio {seconds[0.05] / seconds[0.0]:.2f}", flush=True)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n x n matmul in the compute dtype the training uses."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def plain_loop(student: str, items: list[dict], cfg: ExperimentConfig, weights: tuple[float, ...], steps: int,
               device: torch.device) -> dict[float, dict]:
    """The trainer's step in one process without Ray: same model, objective, batches and optimizer.

    Every batch is trained once per lambda in `weights`, back to back, so that load from other processes on a
    shared machine hits all of them alike and their ratio stays meaningful.
    """
    tcfg = cfg.train
    torch.manual_seed(0)
    model = build_model(student, tcfg).to(device)
    objective = ReflectionObjective(model, 0.0, tcfg.reflection.margin, tcfg.reflection.pooling,
                                    chunk_tokens=tcfg.logits_chunk_tokens)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=tcfg.lr)
    amp = autocast_dtype(device, tcfg.bf16)
    plan = plan_batches([str(i["id"]) for i in items], tcfg, world=1, seed=0)[: steps + 1]
    pad_id = load_tokenizer(student).pad_token_id
    stats = {w: {"tokens": 0, "items": 0, "seconds": 0.0, "all_tokens": 0, "all_seconds": 0.0} for w in weights}
    for index, (_, indices) in enumerate(plan):
        batch = {k: v.to(device) for k, v in collate([items[i] for i in indices], pad_id, tcfg.w_prefix).items()}
        for weight in weights:
            objective.weight = weight
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = objective(batch)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_([p for p in objective.parameters() if p.requires_grad], tcfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            tokens = int(batch["attention_mask"].sum())
            if weight > 0 and bool(batch["valid"].any()):
                tokens += int(batch["pos_attention_mask"].sum() + batch["neg_attention_mask"].sum())
            s = stats[weight]
            s["all_tokens"], s["all_seconds"] = s["all_tokens"] + tokens, s["all_seconds"] + seconds
            if index > 0:  # the first batch warms up: allocator, kernels, first-touch
                s["tokens"], s["items"], s["seconds"] = s["tokens"] + tokens, s["items"] + len(indices), s["seconds"] + seconds
    params = sum(p.numel() for p in model.parameters())
    return {w: {"tokens_s": s["tokens"] / s["seconds"], "all_tokens_s": s["all_tokens"] / s["all_seconds"],
                "s_per_item": s["seconds"] / s["items"], "params": params, "amp": str(amp)} for w, s in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=48, help="items built (two per question)")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per loop (after one warm-up step)")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--memory", action="store_true", help="peak RSS per step on gsm8k-shaped batches")
    parser.add_argument("--no-trim", action="store_true", help="--memory: no malloc_trim after each step")
    parser.add_argument("--dropout", action="store_true", help="s/step at LoRA dropout 0.05 against 0")
    parser.add_argument("overrides", nargs="*", help="--memory: config overrides, e.g. train.logits_chunk_tokens=0")
    args = parser.parse_args()
    if args.memory:
        torch.set_num_threads(os.cpu_count() or 1)
        student = resolve_model_dir("smollm2-135m")
        # configs/cpu/gsm8k.yaml's training (from configs/demo.yaml): batch 8, LoRA r=16, triplets at lambda 0.5.
        cfg = load_config("configs/cpu/gsm8k.yaml", args.overrides)
        items = gsm8k_items(student, args.items, cfg).to_dict("records")
        print(f"{len(items)} gsm8k items, longest anchor {max(len(i['input_ids']) for i in items)} tokens, "
              f"batch {cfg.train.batch_size}, {os.cpu_count()} threads")
        memory_loop(student, items, cfg, args.steps, trim=not args.no_trim)
        return

    device = torch.device("cuda" if args.gpu else "cpu")
    threads = torch.get_num_threads() if args.gpu else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    student = resolve_model_dir("smollm2-135m")
    cfg = ExperimentConfig.model_validate({
        "ray": {"num_cpus": os.cpu_count()},
        "train": {"batch_size": 8, "epochs": 1, "warmup_steps": 0, "num_workers": 1, "use_gpu": args.gpu,
                  "cpus_per_worker": os.cpu_count(), "threads_per_worker": threads, "checkpoint_every_steps": 1000},
    })
    # Every loop (plain and Ray) walks the same batches of the same items.
    items = make_items(student, args.items, cfg).to_dict("records")[: cfg.train.batch_size * (args.steps + 1)]
    print(f"device {device}, torch threads {threads}, {len(items)} items, batch {cfg.train.batch_size}, "
          f"LoRA r={cfg.train.lora.r} on {len(cfg.train.lora.target_modules)} modules")

    if args.dropout:
        dropout_cost(student, items, cfg, args.steps)
        return
    loops = plain_loop(student, items, cfg, (0.0, 0.5), args.steps, device)
    no_ref, ref = loops[0.0], loops[0.5]
    compute = torch.bfloat16 if no_ref["amp"] == "torch.bfloat16" else torch.float32
    peak = matmul_peak(device, compute)
    cost = ref["s_per_item"] / no_ref["s_per_item"]
    print(f"plain loop, lambda=0  : {no_ref['tokens_s']:8.1f} tok/s  {no_ref['s_per_item']:.3f} s/item "
          f"(autocast {no_ref['amp']})")
    print(f"plain loop, lambda=0.5: {ref['tokens_s']:8.1f} tok/s  {ref['s_per_item']:.3f} s/item")
    print(f"reflection cost per item: {cost:.2f}x (goal <= 2.2x)")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train_data.parquet"
        pd.DataFrame(items).to_parquet(path)
        ray_cfg = cfg.model_copy(deep=True)
        ray_cfg.train.reflection.weight = 0.0
        result = train_round(path, student, Path(folder) / "out", ray_cfg, seed=0)
    ray_tokens_s = result.tokens / result.train_s
    # Both sides counted over the same batches, warm-up step included (the Ray worker times every step).
    print(f"Ray Train, 1 worker, lambda=0: {ray_tokens_s:8.1f} tok/s inside steps ({result.steps} steps, "
          f"{result.train_s:.1f} s of {result.wall_s:.1f} s wall incl. startup and export)")
    print(f"plain loop, lambda=0, warm-up step included: {no_ref['all_tokens_s']:8.1f} tok/s")
    print(f"Ray Train / plain loop: {ray_tokens_s / no_ref['all_tokens_s']:.2f} (goal >= 0.9)")

    params = no_ref["params"]
    for name, run in (("lambda=0", no_ref), ("lambda=0.5", ref)):
        mfu = 6 * params * run["tokens_s"] / peak
        print(f"MFU {name}: 6 * {params / 1e6:.1f}M params * {run['tokens_s']:.1f} tok/s / "
              f"{peak / 1e9:.1f} GFLOP/s peak ({compute}) = {100 * mfu:.1f}% (goal >= 30%)")


if __name__ == "__main__":
    main()
