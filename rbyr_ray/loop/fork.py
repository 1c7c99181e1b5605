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

from ..config import ExperimentConfig, round_train
from .rundir import RunDir, load_run_config, lock_run_dir

log = logging.getLogger(__name__)

# Keys that never change what a stage computes (bookkeeping), and the loss-only reflection keys.
_BOOKKEEPING = {"name": True, "run_dir": True, "rounds": True, "patience": True, "tracking": True}
# start_round and lr are compared per round instead (config.round_train): an SFT round before start_round is the
# same whatever the reflection settings, so presets differing only in round 2's objective share round 1.
_LOSS_ONLY = {"weight", "kind", "margin", "pooling", "beta", "penalty", "start_round", "lr"}
_ROUND_STAGES = ["exam", "teacher", "train_data", "train", "eval"]
# What the untuned student's round 0 (its exam and evaluation) reads.
_ROUND0_INPUTS = {"task", "student", "exam", "eval", "seed"}


def shareable_stages(cfg: ExperimentConfig, src_cfg: ExperimentConfig, src: RunDir) -> list[tuple[int, str]]:
    """The completed stages of `src` (in loop order) that a run of `cfg` would compute identically."""
    # Where teacher answers are cached does not change them (the ledger is content-addressed).
    exclude = {**_BOOKKEEPING, "teacher": {"ledger"}, "train": {"reflection": _LOSS_ONLY}}
    if cfg.model_dump(exclude=exclude) != src_cfg.model_dump(exclude=exclude):
        return _round0_stages(cfg, src_cfg, src)
    shared: list[tuple[int, str]] = []
    for k in range(min(cfg.rounds, src_cfg.rounds) + 1):
        # Round 1 learns from round 0's exam (if any) and has none of its own.
        for stage in (["exam", "eval"] if k == 0 else _ROUND_STAGES[1:] if k == 1 else _ROUND_STAGES):
            entry = src.done(k, stage)
            if entry is None:
                if k == 0 and stage == "exam":
                    continue  # no round-0 exam in either config (the configs are equal there)
                return shared
            # Training differs if the round's learning rate does, or if a reflection loss can act in either run
            # (otherwise L = L_lm in both).
            if stage == "train" and not _same_training(cfg, src_cfg, k, src):
                return shared
            shared.append((k, stage))
    return shared


def _same_training(cfg: ExperimentConfig, src_cfg: ExperimentConfig, k: int, src: RunDir) -> bool:
    """Whether round k trains identically under both configs (the same data and starting model given)."""
    mine, theirs = round_train(cfg.train, k), round_train(src_cfg.train, k)
    if mine.lr != theirs.lr:
        return False
    per_round = {"start_round", "lr"}  # already applied by round_train
    if mine.reflection.model_dump(exclude=per_round) == theirs.reflection.model_dump(exclude=per_round):
        return True
    data = (src.done(k, "train_data") or {}).get("metrics", {})
    return not (_reflection_acts(mine.reflection, data) or _reflection_acts(theirs.reflection, data))


def _reflection_acts(rcfg, train_data_metrics: dict) -> bool:
    """Whether a round's reflection settings have items to act on: the triplet those with a positive and a
    negative, the other kinds those with a negative (an old stage without the count: assume it acts)."""
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
    src = RunDir.create_or_resume(src_dir, src_cfg)  # read only: no lock
    lock_run_dir(dst_dir)
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
