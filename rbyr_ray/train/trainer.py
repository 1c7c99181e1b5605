"""One round of student training on Ray Train: L = L_lm + lambda * L_ref (METHOD.md), LoRA or full, many workers.

    result = train_round(round_dir / "train_data.parquet", init_model=prev_model_dir, out_dir=round_dir / "train",
                         cfg=cfg, seed=cfg.seed)
    result.model_dir   # merged HF folder (safetensors + tokenizer): what the exam engines and the next round load

Layout: `train_round` (the driver) starts a TorchTrainer whose workers run `train_loop`; each worker builds the
model (a fresh LoRA on top of `init_model`, or all weights trainable), wraps the objective in DDP (FSDP on
request), and steps through the same global batch plan, taking its 1/world slice of every batch. Rank 0 writes
checkpoints (trainable weights, optimizer, scheduler, step, loss sums) through `ray.train.report`; a restarted
worker group resumes from `ray.train.get_checkpoint()`. The driver turns the final checkpoint into a merged folder.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ExperimentConfig, TrainConfig
from ..errors import RunError
from ..placement import wait_actors_dead
from ..ray_utils import init_ray
from ..student.models import bf16_native
from ..testhooks import env_name, test_hook
from .data import collate, question_batches
from .losses import IGNORE
from .objective import PAIR_KINDS, REFERENCE_KINDS, SIGNALS, ReflectionObjective

log = logging.getLogger(__name__)

# Tests only: the path of a flag file. While it exists, the last worker deletes it and dies once the controller has
# registered the first checkpoint, so FailureConfig must restart the group and training must resume from it.
CRASH_ENV = env_name("TRAIN_CRASH_ONCE")
STATE_FILE = "state.pt"
# Ray Train's controller polls its workers every 2 s by default, so a round's fit() returned up to 2 s after the
# last step (3 s a stage, measured on 2 cores); 0.5 s costs a few small RPCs a second. A value set in the
# environment wins (Ray Train passes it on to its controller).
HEALTH_CHECK_ENV, HEALTH_CHECK_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


@dataclass
class TrainResult:
    """Over the last epoch, all workers: lm_loss the mean over micro-batches; reflection_loss and `signals` the
    means over the items the reflection loss acted on (None/empty when it acted on none: no triplets, or λ = 0)."""

    model_dir: str
    lm_loss: float
    reflection_loss: float | None
    steps: int  # optimizer steps
    tokens: int  # non-pad tokens through a forward: anchors, positives/negatives where L_ref ran, ranking's pi_ref
    wall_s: float
    epoch_lm_loss: list[float] = field(default_factory=list)  # the mean L_lm of every epoch, in order
    resumed_from_step: int = 0  # > 0 when a restarted worker group resumed from a checkpoint
    replica_max_diff: float = 0.0  # max |w_rank_i - w_rank_j| over trainable weights at the end (DDP: 0)
    train_s: float = 0.0  # seconds inside training steps (no startup, checkpoints, export): tokens / train_s
    reflection_items: int = 0  # items of the last epoch with what the loss needs (triplet: p and n; ranking: n)
    # Per worker: rank, pid and the item indices of its slice of every micro-batch (since a restart, if any).
    workers: list[dict] = field(default_factory=list)
    signals: dict[str, float] = field(default_factory=dict)  # SIGNALS[kind]: Δ and active, or TRL's rewards/*
    peak_rss_gb: float = 0.0  # the largest peak resident memory of a worker (a restarted one: since its restart)


# ------------------------------------------------------------------------------------------------ the plan


def item_length(item: dict, kind: str) -> int:
    """Tokens an item puts through the forwards of its loss: what length grouping sorts by."""
    if kind in PAIR_KINDS:
        return len(item["input_ids"]) + len(item["neg_ids"])
    return len(item["input_ids"]) + (len(item["pos_ids"]) + len(item["neg_ids"]) if item["valid"] else 0)


def padded_tokens(group: list[dict], kind: str, with_ref: bool) -> int:
    """Token positions the forwards of these items hold together, padding included (collate pads each forward's
    sequences to its longest; an item without a sequence stands in its bare prefix): what activations scale with."""
    n = len(group)
    anchors = n * max(len(item["input_ids"]) for item in group)
    if not with_ref:
        return anchors

    def width(item: dict, key: str) -> int:
        return len(item[key]) or int(item["n_prefix"])

    if kind in PAIR_KINDS:
        return anchors + n * max(width(item, "neg_ids") for item in group)
    if not any(item["valid"] for item in group):
        return anchors  # no triplet: the positives' and negatives' forward does not run
    return anchors + 2 * n * max(max(width(item, "pos_ids"), width(item, "neg_ids")) for item in group)


def micro_batches(items: list[dict], indices: list[int], budget: int | None, kind: str,
                  with_ref: bool) -> list[list[int]]:
    """`indices` (one worker's slice of a planned batch) cut into micro-batches of at most `budget` padded tokens
    (train.max_tokens_per_micro_batch; an item longer than that alone). The slice whole when it fits or budget is
    None; else shortest items first, so that a micro-batch pads little."""
    if not budget or padded_tokens([items[i] for i in indices], kind, with_ref) <= budget:
        return [list(indices)]
    groups: list[list[int]] = [[]]
    for i in sorted(indices, key=lambda i: item_length(items[i], kind)):
        if groups[-1] and padded_tokens([items[j] for j in [*groups[-1], i]], kind, with_ref) > budget:
            groups.append([])
        groups[-1].append(i)
    return groups


def plan_batches(ids: list[str], cfg: TrainConfig, world: int, seed: int,
                 lengths: list[int] | None = None) -> list[tuple[int, list[int]]]:
    """(epoch, item indices) of every global batch of the run; the same on every worker and after a restart.

    `epochs` may be fractional. A batch smaller than the number of workers is dropped (every worker needs
    an item), and the plan is cut to a whole number of optimizer steps (grad_accum batches each). With
    `cfg.group_by_length`, `lengths` (tokens per item) groups similar lengths into a batch.
    """
    by_length = lengths if cfg.group_by_length else None

    def epoch_batches(epoch: int) -> list[list[int]]:
        return [b for b in question_batches(ids, cfg.batch_size, seed + epoch, by_length) if len(b) >= world]

    per_epoch = len(epoch_batches(0))
    total = max(cfg.grad_accum, round(cfg.epochs * per_epoch)) // cfg.grad_accum * cfg.grad_accum
    plan = [(epoch, batch) for epoch in range(math.ceil(cfg.epochs) + 1) for batch in epoch_batches(epoch)]
    return plan[:total]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup over `warmup` steps, then constant (METHOD.md default) or linear decay to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    return 1.0


# ------------------------------------------------------------------------------------------------ the model


def build_model(init_model: str, cfg: TrainConfig) -> torch.nn.Module:
    """float32 master weights (autocast does the bf16 compute); a fresh LoRA on top, or every weight trainable."""
    from ..student.models import load_model

    model = load_model(init_model, dtype="float32")
    if cfg.gradient_checkpointing:  # keep each layer's input only; recompute its activations in the backward pass
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not cfg.lora.enabled:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lora = PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def autocast_dtype(device: torch.device, want_bf16: bool) -> torch.dtype | None:
    """bf16 where the hardware computes it natively; elsewhere bf16 matmuls are emulated and far slower."""
    if not want_bf16:
        return None
    return torch.bfloat16 if bf16_native(device.type) else None


def wrap(objective: torch.nn.Module, cfg: TrainConfig, device: torch.device, world: int) -> torch.nn.Module:
    """DDP (gloo on CPU, NCCL on GPU) or FSDP (full fine-tuning only); the objective's forward holds both passes."""
    if cfg.fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        layers = {type(layer) for layer in objective.model.get_decoder().layers}
        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers)
        return FullyShardedDataParallel(objective, auto_wrap_policy=policy, use_orig_params=True,
                                        device_id=device if device.type == "cuda" else None)
    if world == 1:
        return objective
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None)


def trainable_state(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) trainable weights and optimizer state on CPU; a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_state_dict(wrapped, optimizer, options=options)


def load_trainable_state(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict,
                         optim: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    options = StateDictOptions(full_state_dict=True, ignore_frozen_params=True, strict=False)
    set_state_dict(wrapped, optimizer, model_state_dict=weights, optim_state_dict=optim, options=options)


def replica_spread(model: torch.nn.Module, device: torch.device) -> float:
    """max over trainable weights of (max over workers - min over workers): 0 when all replicas agree."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters() if p.requires_grad]).to(device)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 0.0
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).max())


def gather_objects(obj: object) -> list:
    """Every worker's `obj`, in rank order (a collective): what each worker did, as seen by rank 0."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    import torch.distributed as dist

    tensor = tensor.to(device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.cpu()


def reference_logps(objective: ReflectionObjective, items: list[dict], indices: list[int], cfg: TrainConfig,
                    pad_id: int, device: torch.device, amp: torch.dtype | None) -> int:
    """pi_ref for `ranking`: the log-likelihoods of each item's chosen and rejected targets under the weights
    before the first step, stored in its row (`ref_chosen_logp`, `ref_rejected_logp`). A fresh LoRA is zero, so
    this is the model with its adapters disabled; full fine-tuning needs no frozen copy either. Once per round,
    not per epoch. Returns the tokens read."""
    todo = sorted((i for i in indices if len(items[i]["neg_ids"])), key=lambda i: item_length(items[i], "ranking"))
    for i in indices:
        items[i]["ref_chosen_logp"] = items[i]["ref_rejected_logp"] = 0.0  # items without a negative: unused
    tokens = 0
    objective.eval()  # no dropout: pi_ref is a fixed function
    groups = [group for start in range(0, len(todo), cfg.batch_size)
              for group in micro_batches(items, todo[start:start + cfg.batch_size], cfg.max_tokens_per_micro_batch,
                                         "ranking", True)]
    for group in groups:
        chunk = [items[i] for i in group]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id, cfg.w_prefix, "ranking").items()}
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            chosen, rejected = objective.reference_logps(batch)
        for item, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
            item["ref_chosen_logp"], item["ref_rejected_logp"] = c, r
        tokens += int(batch["attention_mask"].sum() + batch["neg_attention_mask"].sum())
    objective.train()
    return tokens


def label_tokens(batch: dict) -> int:
    """The positions weighted_lm_loss divides by: every non-pad label after the first token of a sequence."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def run_batch(wrapped: torch.nn.Module, items: list[dict], indices: list[int], cfg: TrainConfig, pad_id: int,
              device: torch.device, amp: torch.dtype | None, *, seed: int, no_sync=None, sync: bool = True) -> dict:
    """Forward and backward of this worker's slice `indices` of one planned batch, in micro-batches of at most
    cfg.max_tokens_per_micro_batch padded tokens: the same gradient as the slice in one forward. Each micro-batch's
    loss is its share of the slice's (L_lm by label tokens, L_ref by valid items; see ReflectionObjective), scaled
    by 1/grad_accum; gradients accumulate. With `no_sync` (DDP's), no backward all-reduces but the last
    micro-batch's when `sync` (the optimizer step's last planned batch).

    Returns the slice's lm_loss, n_valid and, over its valid items, the sums of L_ref and the signals; tokens
    (non-pad, through a forward), padded (per micro-batch: positions held, pads included), micro and `out`, the
    last micro-batch's outputs (its lm_loss the slice's)."""
    rcfg = cfg.reflection
    item_keys = ("ref_loss", *SIGNALS[rcfg.kind])
    groups = micro_batches(items, indices, cfg.max_tokens_per_micro_batch, rcfg.kind, rcfg.weight > 0)
    batches = [collate([items[i] for i in group], pad_id, cfg.w_prefix, rcfg.kind) for group in groups]
    lm_norm = max(1, sum(label_tokens(b) for b in batches))
    ref_norm = max(1, sum(int(b["valid"].sum()) for b in batches))
    result = {"lm_loss": 0.0, "n_valid": 0.0, "item_sums": [0.0] * len(item_keys), "tokens": 0, "micro": len(groups),
              "padded": [padded_tokens([items[i] for i in g], rcfg.kind, rcfg.weight > 0) for g in groups]}
    for m, batch in enumerate(batches):
        if m:
            torch.manual_seed(seed + 1_000_003 * m)  # dropout; the first micro-batch draws from the caller's seed
        lm_share = label_tokens(batch) / lm_norm
        batch |= {"lm_share": torch.tensor(lm_share, dtype=torch.float64),
                  "ref_share": torch.tensor(int(batch["valid"].sum()) / ref_norm, dtype=torch.float64)}
        batch = {k: v.to(device) for k, v in batch.items()}
        reduce = sync and m == len(batches) - 1
        with no_sync() if no_sync is not None and not reduce else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = wrapped(batch)
            (out["loss"] / cfg.grad_accum).backward()
        n_valid = float(out["n_valid"])
        result["lm_loss"] += out["lm_loss"].item() * lm_share
        result["n_valid"] += n_valid
        if n_valid:
            result["item_sums"] = [acc + float(out[k]) * n_valid for acc, k in zip(result["item_sums"], item_keys)]
        result["tokens"] += int(batch["attention_mask"].sum())
        if n_valid:  # the positives' and negatives' forward ran
            result["tokens"] += sum(int(batch[k].sum()) for k in ("pos_attention_mask", "neg_attention_mask") if k in batch)
        del batch
    result["out"] = out | {"lm_loss": torch.tensor(result["lm_loss"])}
    return result


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@functools.cache
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim). Each step frees GBs of activations of shapes that
    change with the batch; glibc keeps them in its arenas, so RSS would creep up with the step count."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _write_memory(path: str | None, rank: int, record: dict) -> None:
    """The last step's memory figures, for the driver's message when the worker is killed for memory."""
    if not path:
        return
    target = Path(path) / f"rank{rank}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, target)


# ------------------------------------------------------------------------------------------------ the worker


def train_loop(config: dict) -> None:
    """The per-worker training loop (TorchTrainer's train_loop_per_worker)."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["train"])
    items, seed = config["items"], config["seed"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    # device "cpu" with use_gpu: the GPUs Ray reserved are logical (placement tests on a CPU machine).
    device = ray.train.torch.get_device() if train_device(cfg) == "cuda" else torch.device("cpu")
    amp = autocast_dtype(device, cfg.bf16)

    rcfg = cfg.reflection
    torch.manual_seed(seed)  # the same fresh LoRA on every worker (DDP also broadcasts rank 0's weights)
    model = build_model(config["init_model"], cfg).to(device)
    objective = ReflectionObjective(model, rcfg.weight, rcfg.margin, rcfg.pooling, rcfg.kind, rcfg.beta, rcfg.penalty,
                                    chunk_tokens=cfg.logits_chunk_tokens)
    plan = plan_batches([str(item["id"]) for item in items], cfg, world, seed,
                        [item_length(item, rcfg.kind) for item in items])
    if not plan:
        raise ValueError(f"{len(items)} items make no batch with an item for each of {world} workers")
    tokens = 0
    if rcfg.kind in REFERENCE_KINDS and rcfg.weight > 0:  # on the starting weights: before wrapping, before any resume
        mine = sorted({i for _, batch in plan for i in batch[rank::world]})
        tokens += reference_logps(objective, items, mine, cfg, config["pad_id"], device, amp)
    wrapped = wrap(objective, cfg, device, world)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    total_steps = len(plan) // cfg.grad_accum
    n_epochs = plan[-1][0] + 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, warmup=cfg.warmup_steps, total=total_steps, schedule=cfg.schedule))
    # Per epoch: sum of L_lm, micro-batches, valid items, and over those items the sums of L_ref and the signals
    # (so their means weigh items, not micro-batches); this worker's share, summed over workers at the end.
    item_keys = ("ref_loss", *SIGNALS[rcfg.kind])
    sums = torch.zeros(n_epochs, 3 + len(item_keys), dtype=torch.float64)
    step, resumed_from, train_s = 0, 0, 0.0
    slices: list[list[int]] = []  # the item indices this worker trained on, per micro-batch (since its start)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
        load_trainable_state(wrapped, optimizer, state["weights"], state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sums, tokens, step, train_s = state["sums"], state["tokens"], state["step"], state["train_s"]
        resumed_from = state["resumed_from"] or step
        log.info("rank %d resumed from step %d", rank, step)

    def report(final: bool, metrics: dict) -> None:
        """Every worker calls ray.train.report at the same points; only rank 0 attaches the checkpoint."""
        weights, optim = trainable_state(wrapped, optimizer)
        metrics |= {"step": step, "tokens": tokens, "resumed_from_step": resumed_from, "final": final,
                    "replica_max_diff": replica_spread(wrapped, device) if not cfg.fsdp else 0.0}
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"weights": weights, "optimizer": optim, "scheduler": scheduler.state_dict(), "step": step,
                        "sums": sums, "tokens": tokens, "resumed_from": resumed_from, "train_s": train_s}, Path(folder) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    wrapped.train()
    while step < total_steps:
        started = time.perf_counter()
        padded = 0
        for micro in range(cfg.grad_accum):
            epoch, indices = plan[step * cfg.grad_accum + micro]
            torch.manual_seed(seed + 7919 * (step * cfg.grad_accum + micro) + rank)  # dropout: exact on resume
            slices.append(indices[rank::world])
            # Gradients are all-reduced only on the last micro-batch of an optimizer step.
            last = micro == cfg.grad_accum - 1
            done = run_batch(wrapped, items, indices[rank::world], cfg, config["pad_id"], device, amp,
                             seed=seed + 7919 * (step * cfg.grad_accum + micro) + rank,
                             no_sync=wrapped.no_sync if world > 1 else None, sync=last)
            out, padded = done["out"], max(padded, *done["padded"])
            sums[epoch] += torch.tensor([done["lm_loss"], 1.0, done["n_valid"], *done["item_sums"]], dtype=torch.float64)
            tokens += done["tokens"]
        torch.nn.utils.clip_grad_norm_([p for p in wrapped.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        del out["loss"], done  # the last graph's outputs: nothing of this step outlives it
        release_free_memory()
        step += 1
        _write_memory(config.get("memory_dir"), rank, {"step": step, "steps": total_steps, "peak_rss_gb": peak_rss_gb(),
                                                       "padded_tokens": padded})
        if step == 1:
            from ..stops import pause_if_asked

            pause_if_asked("train")  # tests: stop a run mid-training
        train_s += time.perf_counter() - started
        if rank == 0 and (step % max(1, total_steps // 10) == 0 or step == total_steps):  # progress, ~10 lines
            # A log record, not print(): Ray Train tees a worker's print to stdout and to its logger (each line twice).
            log.info("train step %d/%d: lm_loss %.4f%s, %.2f s/step, peak RSS %.1f GB", step, total_steps,
                     out["lm_loss"].item(), _signal_text(out, rcfg), train_s / step, peak_rss_gb())
        if step % cfg.checkpoint_every_steps == 0 and step < total_steps:
            report(False, {"lm_loss": out["lm_loss"].item(), "ref_loss": out["ref_loss"].item()})
            crash = config.get("crash_file")
            if crash and rank == world - 1 and os.path.exists(crash):
                _die_once_registered(crash)

    totals = all_sum(sums.clone(), device)
    lm_means = totals[:, 0] / totals[:, 1].clamp(min=1)
    n_last = int(totals[-1, 2])
    last = {key: float(totals[-1, 3 + j] / n_last) if n_last else None for j, key in enumerate(item_keys)}
    report(True, {"lm_loss": float(lm_means[-1]), "reflection_loss": last.pop("ref_loss"), "reflection_items": n_last,
                  "signals": {k: v for k, v in last.items() if v is not None},
                  "epoch_lm_loss": [float(x) for x in lm_means], "steps": total_steps,
                  "tokens": int(all_sum(torch.tensor([tokens], dtype=torch.float64), device).item()),
                  "train_s": train_s, "placement_group": _placement_group_id(),
                  "peak_rss_gb": max(gather_objects(peak_rss_gb())),
                  "workers": gather_objects({"rank": rank, "pid": os.getpid(), "slices": slices})})


def _die_once_registered(flag: str) -> None:
    """Tests (CRASH_ENV): die hard once the controller has registered the checkpoint just reported (and written
    its snapshot to storage), so that the restarted group resumes from it on any machine, not after a poll."""
    import ray.train
    from ray.train import CheckpointConsistencyMode

    # Blocks until the controller has processed every report this worker made: acknowledged, not just sent.
    registered = ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
    if not registered:
        raise RuntimeError("crash hook: the controller registered no checkpoint")
    os.remove(flag)
    os._exit(1)  # a hard death, as if the process were killed: no cleanup, no exception


def _signal_text(out: dict, rcfg) -> str:
    """The progress line's reflection part: L_ref and Δ (triplet) or L_rank, margin and accuracy (ranking)."""
    if rcfg.weight == 0:
        return ""
    if not float(out["n_valid"]):
        return " ref_loss - (no triplets in this batch)" if rcfg.kind == "triplet" else " rank_loss - (no pairs in this batch)"
    if rcfg.kind == "triplet":
        return (f" ref_loss {out['ref_loss'].item():.4f} Δ {float(out['reflection_gap']):+.4f} "
                f"active {float(out['reflection_active']):.2f}")
    if rcfg.kind in ("hinge", "redi"):
        active = f" active {float(out['hinge_active']):.2f}" if rcfg.kind == "hinge" else ""
        return (f" {rcfg.kind}_loss {out['ref_loss'].item():.4f} ℓ̄(t) {float(out['loglik_chosen']):+.3f} "
                f"ℓ̄(m) {float(out['loglik_rejected']):+.3f}{active}")
    return (f" rank_loss {out['ref_loss'].item():.4f} rewards/margins {float(out['rewards/margins']):+.4f} "
            f"rewards/accuracies {float(out['rewards/accuracies']):.2f}")


def _placement_group_id() -> str | None:
    """The worker group's placement group, so the driver can wait until its workers are gone."""
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    return pg.id.hex() if pg is not None else None


# ------------------------------------------------------------------------------------------------ the driver


def train_device(cfg: TrainConfig) -> str:
    """"auto": CUDA when the workers ask for GPUs (use_gpu); "cpu" computes on the CPU whatever Ray reserved."""
    if cfg.device == "auto":
        return "cuda" if cfg.use_gpu else "cpu"
    return cfg.device


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    resources = {"CPU": cfg.cpus_per_worker, **cfg.resources_per_worker}
    if cfg.use_gpu:
        resources.setdefault("GPU", 1.0)
    return resources


def export_model(state_path: Path, init_model: str, out: Path, cfg: ExperimentConfig) -> Path:
    """The round's weights as one plain HF folder: LoRA merged into the base (or the full weights), in the student
    dtype, with the tokenizer. Both exam engines (transformers, vLLM) load it; the next round starts from it."""
    from ..student.models import load_tokenizer, resolve_dtype

    state = torch.load(state_path, weights_only=False)
    model = build_model(init_model, cfg.train)
    weights = {k.removeprefix("model."): v for k, v in state["weights"].items()}  # objective.model.* -> model.*
    missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(weights)
    if missing:
        raise RuntimeError(f"checkpoint {state_path} lacks trainable weights: {sorted(missing)[:3]}")
    model.load_state_dict(weights, strict=False)
    if cfg.train.lora.enabled:
        model = model.merge_and_unload()
    # student.dtype may be "auto": the dtype the exam engines will compute in on the exam's device.
    exam_device = "cuda" if cfg.exam.gpus_per_replica > 0 and cfg.exam.device != "cpu" else "cpu"
    model = model.to(getattr(torch, resolve_dtype(cfg.student.dtype, exam_device)))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(init_model).save_pretrained(out)
    return out


def _fit(trainer):
    """trainer.fit(), with Ctrl-C meaning what it means in every other stage: the run stops, the stage is not
    recorded, and `rbyr-ray` exits 130 with completed stages kept. Ray Train's own SIGINT handler aborts the
    training run and then calls sys.exit(0) (a run that looked successful to `make demo && ...`), and it stays
    installed after fit() returns; both are undone here."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    except SystemExit as exc:
        raise KeyboardInterrupt("training aborted (Ctrl-C)") from exc
    finally:
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGINT, previous)


# What Ray says when its memory monitor kills a worker (OutOfMemoryError; ActorDiedError "...running low on memory").
_OOM = re.compile(r"OutOfMemoryError|running low on memory|memory monitor|memory usage threshold|killed due to memory",
                  re.IGNORECASE)


def _error_text(exc: BaseException) -> str:
    """The messages of an exception, its causes and Ray Train's per-worker failures, as one text."""
    parts, seen, todo = [], set(), [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        parts.append(f"{type(error).__name__}: {error}")
        todo += [error.__cause__, error.__context__, getattr(error, "controller_failure", None),
                 *getattr(error, "worker_failures", {}).values()]
    return "\n".join(parts)


def memory_failure(exc: BaseException, out_dir: Path, cfg: TrainConfig) -> str | None:
    """One line when training died because a worker ran out of memory (Ray's memory monitor, or the kernel's OOM
    killer: a worker that died with SIGKILL): the stage, the worker's peak, what to lower. None otherwise."""
    text = _error_text(exc)
    if not _OOM.search(text) and not re.search(r"SIGKILL|signal 9|exit code -9|killed by signal", text):
        return None
    records = [json.loads(f.read_text()) for f in sorted((out_dir / "memory").glob("rank*.json"))]
    used = re.search(r"memory used=([\d.]+)\s*GB", text)
    node = re.search(r"was ([\d.]+)\s*GB(?: used)? / ([\d.]+)\s*GB", text)  # Ray 2.60: "was 22.9GB used / 24.0GB limit"
    peak = f"a worker held {used.group(1)} GB" if used else None
    if records:
        last = max(records, key=lambda r: r["peak_rss_gb"])
        peak = (peak + "; " if peak else "") + (f"its peak after step {last['step']}/{last['steps']} was "
                                                f"{last['peak_rss_gb']:.1f} GB, {last['padded_tokens']} tokens in its largest micro-batch")
    if node:
        peak = (peak + ", " if peak else "") + f"the node used {node.group(1)} of {node.group(2)} GB"
    budget = cfg.max_tokens_per_micro_batch
    lower = f"train.max_tokens_per_micro_batch={max(64, budget // 2) if budget else 1024}"
    return (f"training ({out_dir.name}) was killed for lack of memory ({peak or 'no step finished'}); lower "
            f"train.max_tokens_per_micro_batch (now {budget}), e.g. `rbyr-ray resume RUN_DIR {lower}`, or set "
            "train.gradient_checkpointing=true")


def train_round(train_data_path: str | os.PathLike, init_model: str, out_dir: str | os.PathLike,
                cfg: ExperimentConfig, *, seed: int) -> TrainResult:
    """Train on the items of `train_data_path` (see data.build_train_items), starting from the HF folder
    `init_model` (the previous round's merged model), and save the merged result at out_dir/"model"."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..loop.files import read_parquet
    from ..student.models import load_tokenizer

    tcfg = cfg.train
    if tcfg.fsdp and tcfg.lora.enabled:
        raise ValueError("train.fsdp shards full fine-tuning; set train.lora.enabled=false (LoRA uses DDP)")
    init_ray(cfg.ray)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = read_parquet(train_data_path)
    if frame.empty:
        raise ValueError(f"{train_data_path}: no training items")
    if tcfg.reflection.kind in PAIR_KINDS and "has_negative" not in frame.columns:
        raise ValueError(f"{train_data_path}: built before train.reflection.kind={tcfg.reflection.kind} (no has_negative column: "
                         "items without a positive lack their negative); rebuild its train_data stage")
    items = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()}
             for row in frame.to_dict("records")]
    config = {"items": items, "init_model": str(init_model), "train": tcfg.model_dump(), "seed": seed,
              "pad_id": load_tokenizer(str(init_model)).pad_token_id, "crash_file": test_hook("TRAIN_CRASH_ONCE"),
              "memory_dir": str(out_dir / "memory")}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if train_device(tcfg) == "cuda" else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=tcfg.num_workers, use_gpu=tcfg.use_gpu,
                                               resources_per_worker=worker_resources(tcfg),
                                               placement_strategy=tcfg.placement_strategy),
        run_config=ray.train.RunConfig(name="train", storage_path=str(out_dir / "ray_train"),
                                       failure_config=ray.train.FailureConfig(max_failures=tcfg.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    shutil.rmtree(out_dir / "memory", ignore_errors=True)  # the figures of this attempt only
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_S)
    start = time.perf_counter()
    try:
        result = _fit(trainer)
    except Exception as exc:
        line = memory_failure(exc, out_dir, tcfg)
        if line:
            raise RunError(line) from None
        raise
    wall = time.perf_counter() - start
    metrics = result.metrics or {}
    if result.checkpoint is None or not metrics.get("final"):
        raise RuntimeError(f"training ended without a final checkpoint (metrics: {metrics})")
    if metrics.get("placement_group"):
        # Ray Train has removed the group's placement group; its workers must also be gone (GPU memory freed)
        # before the next stage's exam engines start.
        wait_actors_dead("train", placement_group_id=metrics["placement_group"])
    with result.checkpoint.as_directory() as folder:
        model_dir = export_model(Path(folder) / STATE_FILE, str(init_model), out_dir / "model", cfg)
    return TrainResult(model_dir=str(model_dir), lm_loss=metrics["lm_loss"], reflection_loss=metrics["reflection_loss"],
                       steps=metrics["steps"], tokens=metrics["tokens"], wall_s=wall,
                       epoch_lm_loss=metrics["epoch_lm_loss"], resumed_from_step=metrics["resumed_from_step"],
                       replica_max_diff=metrics["replica_max_diff"], train_s=metrics["train_s"],
                       reflection_items=metrics["reflection_items"], signals=metrics["signals"],
                       workers=metrics["workers"], peak_rss_gb=metrics.get("peak_rss_gb", 0.0))
