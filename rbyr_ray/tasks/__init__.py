"""Tasks: the six benchmarks and the synthetic `arith`, or a task file (docs/tasks.md); one record type.

    from rbyr_ray.tasks import load_task, TASKS
    data = load_task(cfg.task)            # TaskData(train=[Record...], test=[...], val=[...])
    data.answer_type, data.max_new_tokens # what the stages need, for a built-in task or a task file
    data.prompts.cot_messages(record)     # the teacher's prompts (taskfile.TaskPrompts)
    TASKS["gsm8k"].max_new_tokens         # 256 (METHOD.md)
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import TaskConfig
from .records import AnswerType, Record, TaskData
from .steps import StepCheck, check_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    answer_type: AnswerType
    max_new_tokens: int  # exam/eval generation budget (METHOD.md)
    description: str


TASKS: dict[str, TaskSpec] = {
    "arith": TaskSpec("arith", "numeric", 96, "synthetic multi-step arithmetic word problems (seeded)"),
    "gsm8k": TaskSpec("gsm8k", "numeric", 256, "grade-school math, 7473 train / 1319 test"),
    "svamp": TaskSpec("svamp", "numeric", 192, "SVAMP, reasoning-teacher split 700 / 300"),
    "multiarith": TaskSpec("multiarith", "numeric", 192, "MultiArith, reasoning-teacher split 420 / 180"),
    "asdiv": TaskSpec("asdiv", "numeric", 192, "ASDiv, numeric answers, folds 0-3 train / fold 4 test (docs/data.md)"),
    "csqa": TaskSpec("csqa", "choice", 96, "CommonsenseQA, 9741 train / 1221 dev as test"),
    "strategyqa": TaskSpec("strategyqa", "yesno", 128, "StrategyQA, reasoning-teacher split 1603 / 687"),
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The benchmark folder: the argument, else $RBYR_DATA_DIR, else ../shared/data beside the checkout.

    A folder named explicitly (argument or variable) must exist: falling back to another one would
    silently load different data than the one asked for.
    """
    explicit = data_dir or os.environ.get("RBYR_DATA_DIR")
    if explicit:
        if not Path(explicit).is_dir():
            raise FileNotFoundError(f"benchmark data folder {explicit} does not exist")
        return Path(explicit)
    for candidate in (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "benchmark data not found: pass task.data_dir=DIR (or --data-dir) or set RBYR_DATA_DIR "
        "to the folder holding gsm8k/, svamp/, multiarith/, asdiv/, csqa/, strategyqa/")


def task_overrides(task: str) -> list[str]:
    """The config overrides that name `task` on a command line: a built-in task's name, or a task file's path."""
    if task in TASKS:
        return [f"task.name={task}"]
    if task.endswith((".yaml", ".yml")) or Path(task).is_file():
        return ["task.name=null", f"task.file={task}"]
    raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}, or a task file (docs/tasks.md)")


def _load_raw(cfg: TaskConfig) -> TaskData:
    if cfg.file is not None:
        from .taskfile import load_task_file

        return load_task_file(cfg.file, cfg.spec, allow_hub=cfg.allow_hub_download)
    if cfg.name == "arith":
        from .arith import generate

        return generate(cfg.arith)
    from .benchmarks import LOADERS

    data_dir = resolve_data_dir(cfg.data_dir)
    train, test = LOADERS[cfg.name](data_dir)
    return TaskData(cfg.name, TASKS[cfg.name].answer_type, train=train, test=test)


def load_task(cfg: TaskConfig, seed: int = 0) -> TaskData:
    """Load a task's splits, carve the validation split from train, then apply the limits."""
    if cfg.file is None and cfg.name not in TASKS:
        raise ValueError(f"unknown task {cfg.name!r}; available: {', '.join(TASKS)}")
    data = _load_raw(cfg)
    if cfg.file is None:
        from .taskfile import builtin_with_spec

        spec = TASKS[cfg.name]
        task_prompts, max_new_tokens = builtin_with_spec(cfg.name, spec.answer_type, spec.max_new_tokens, cfg.spec)
        data = replace(data, max_new_tokens=max_new_tokens, prompts=task_prompts)
    train, val = list(data.train), list(data.val)
    if cfg.val_fraction > 0 and val:
        raise ValueError(f"task.val_fraction: the task file {cfg.file} has its own val split; set it to 0")
    if cfg.val_fraction > 0:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(cfg.val_fraction * len(train)))
        val_idx = set(order[:n_val])
        val = [r for i, r in enumerate(train) if i in val_idx]
        train = [r for i, r in enumerate(train) if i not in val_idx]
    if cfg.train_limit:
        train = train[: cfg.train_limit]
    test = data.test[: cfg.test_limit] if cfg.test_limit else data.test
    if cfg.test_limit and val:
        val = val[: cfg.test_limit]
    return replace(data, train=train, test=test, val=val)


def gold_rationale(task: str | None, record: Record) -> str | None:
    """A rationale built from the dataset's own worked solution (the `reference` teacher), or None.

    `task` None (a task file): the record's solution, already cut to its reasoning when it was loaded."""
    if task == "arith" or task not in TASKS:
        return record.solution
    from .benchmarks import gold_rationale as benchmark_rationale

    return benchmark_rationale(task, record)


__all__ = ["TASKS", "Record", "StepCheck", "TaskData", "TaskSpec", "check_steps", "gold_rationale", "load_task",
           "resolve_data_dir", "task_overrides"]
