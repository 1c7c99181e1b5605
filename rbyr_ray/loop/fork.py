"""Forking a run: a new run dir that takes over the stages an earlier run computed exactly as it would.

    stages = fork_run("runs/study/full/seed_0", cfg_multiround, "runs/study/multi-round/seed_0")
    rbyr_ray.run(cfg_multiround, run_dir="runs/study/multi-round/seed_0")   # continues after those stages

Presets that differ only in the reflection loss (lambda, triplet or ranking and their settings) or the number
of rounds share their first stages: the untuned evaluation, round 1 when its loss cannot act (no student
mistakes without a round-0 exam), and a later round's exam, teacher and training data (the same rows whichever
loss reads them), and a round's training too where neither run's reflection loss has an item to act on. A
stage is shared only if every input it has is the same: the configs are equal outside the keys below, and the
model it starts from was shared.
Runs that differ elsewhere (the learning rate, the teacher, ...) still share round 0, which reads only the
task, the student, the exam and evaluation settings and the seed; its greedy evaluation does not read the
seed either, unless the seed carves the validation split it evaluates.

    stages = take_over(["runs/sweep/trials/a", "runs/sweep/trials/b"], cfg, "runs/sweep/trials/c")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import ExperimentConfig
from .rundir import RunDir, load_run_config

log = logging.getLogger(__name__)

# Keys that never change what a stage computes (bookkeeping), and the loss-only reflection keys.
_BOOKKEEPING = {"name": True, "run_dir": True, "rounds": True, "patience": True, "tracking": True}
_LOSS_ONLY = {"weight", "kind", "margin", "pooling", "beta"}
_ROUND_STAGES = ["exam", "teacher", "train_data", "train", "eval"]
# What the untuned student's round 0 (its exam and evaluation) reads.
_ROUND0_INPUTS = {"task", "student", "exam", "eval", "seed"}


def shareable_stages(cfg: ExperimentConfig, src_cfg: ExperimentConfig, src: RunDir) -> list[tuple[int, str]]:
    """The completed stages of `src` (in loop order) that a run of `cfg` would compute identically."""
    # Where teacher answers are cached does not change them (the ledger is content-addressed).
    exclude = {**_BOOKKEEPING, "teacher": {"ledger"}, "train": {"reflection": _LOSS_ONLY}}
    if cfg.model_dump(exclude=exclude) != src_cfg.model_dump(exclude=exclude):
        return _round0_stages(cfg, src_cfg, src)
    same_loss = cfg.train.reflection == src_cfg.train.reflection
    shared: list[tuple[int, str]] = []
    for k in range(min(cfg.rounds, src_cfg.rounds) + 1):
        # Round 1 learns from round 0's exam (if any) and has none of its own.
        for stage in (["exam", "eval"] if k == 0 else _ROUND_STAGES[1:] if k == 1 else _ROUND_STAGES):
            entry = src.done(k, stage)
            if entry is None:
                if k == 0 and stage == "exam":
                    continue  # no round-0 exam in either config (the configs are equal there)
                return shared
            # Training differs only if a reflection loss can act in either run (then L = L_lm in both).
            if stage == "train" and not same_loss:
                data = (src.done(k, "train_data") or {}).get("metrics", {})
                if _reflection_acts(cfg, data) or _reflection_acts(src_cfg, data):
                    return shared
            shared.append((k, stage))
    return shared


def _reflection_acts(cfg: ExperimentConfig, train_data_metrics: dict) -> bool:
    """Whether cfg's reflection loss has items to act on: the triplet those with a positive and a negative,
    ranking those with a negative (an old stage without the count: assume it acts)."""
    rcfg = cfg.train.reflection
    key = "items_with_triplet" if rcfg.kind == "triplet" else "items_with_negative"
    return rcfg.weight > 0 and train_data_metrics.get(key, 1) > 0


def _round0_stages(cfg: ExperimentConfig, src_cfg: ExperimentConfig, src: RunDir) -> list[tuple[int, str]]:
    """Round 0's completed stages of `src` when the configs differ only in what round 0 does not read."""
    def inputs(c: ExperimentConfig, keys: set[str]) -> dict:
        return c.model_dump(include=keys)

    if inputs(cfg, _ROUND0_INPUTS) == inputs(src_cfg, _ROUND0_INPUTS):
        stages = ["exam", "eval"] if cfg.exam.round0 else ["eval"]
    elif cfg.eval.split != "val" and inputs(cfg, _ROUND0_INPUTS - {"seed"}) == inputs(src_cfg, _ROUND0_INPUTS - {"seed"}):
        stages = ["eval"]  # greedy on a split the seed does not draw; the exam samples with the seed
    else:
        return []
    shared = []
    for stage in stages:
        if src.done(0, stage) is None:
            break
        shared.append((0, stage))
    return shared


def fork_run(src_dir: str | os.PathLike, cfg: ExperimentConfig, dst_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """Create (or extend) the run dir `dst_dir` for `cfg` with the stages of `src_dir` it can share."""
    src_cfg = load_run_config(src_dir)
    src = RunDir.create_or_resume(src_dir, src_cfg)
    dst = RunDir.create_or_resume(dst_dir, cfg)
    shared = shareable_stages(cfg, src_cfg, src)
    done = [(e["round"], e["stage"]) for e in dst.manifest["stages"].values()]
    # Only onto a prefix of the shared stages (a fresh run dir, or one whose adoption was interrupted):
    # a stage this run computed itself means its later stages must be computed here too.
    if done != shared[:len(done)]:
        return []
    dst.adopt(src, shared[len(done):])
    return shared[len(done):]


def best_source(candidates: list[str | os.PathLike], cfg: ExperimentConfig) -> Path | None:
    """Of finished or partial run dirs, the one sharing the most stages with a run of `cfg`."""
    best, best_n = None, 0
    for path in candidates:
        if not (Path(path) / "config.yaml").exists():
            continue
        src_cfg = load_run_config(path)
        n = len(shareable_stages(cfg, src_cfg, RunDir.create_or_resume(path, src_cfg)))
        if n > best_n:
            best, best_n = Path(path), n
    return best


def take_over(candidates: list[str | os.PathLike], cfg: ExperimentConfig, run_dir: str | os.PathLike
              ) -> tuple[Path | None, list[tuple[int, str]]]:
    """Fork `run_dir` from the candidate sharing the most stages with it; (that run dir, the stages taken)."""
    source = best_source(candidates, cfg)
    if source is None:
        return None, []
    taken = fork_run(source, cfg, run_dir)
    if taken:
        log.info("%s takes over %s from %s", run_dir, ", ".join(f"round_{k}/{s}" for k, s in taken), source)
    return source, taken
