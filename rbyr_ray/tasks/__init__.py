"""Tasks: each a task file (docs/tasks.md); the seven built-in ones (arith and six benchmarks) ship in builtin/.

    from rbyr_ray.tasks import load_task, TASKS
    data = load_task(cfg.task)            # TaskData(train=[Record...], test=[...], val=[...])
    data.answer_type, data.max_new_tokens # what the stages need, for a built-in task or a task file
    data.prompts.cot_messages(record)     # the teacher's prompts (taskfile.TaskPrompts)
    data.prompts.student_prefix(record)   # the student's prefix; data.prompts.stop ends its answer
    data.reference(record)                # the `reference` teacher's worked solution, or None
    TASKS["gsm8k"].max_new_tokens         # 256: builtin/gsm8k.yaml
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import TaskConfig
from .readers import resolve_data_dir
from .records import AnswerType, Record, TaskData
from .steps import StepCheck, check_steps
from .taskfile import TaskPrompts, builtin_names, builtin_path, file_prompts, load_task_file, read_task_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task as its file declares it (no data read)."""

    name: str
    answer_type: AnswerType
    max_new_tokens: int  # exam/eval generation budget (METHOD.md)
    description: str
    reader: str | None
    path: Path


@functools.cache
def _builtin_specs() -> dict[str, TaskSpec]:
    out = {}
    for name in builtin_names():
        spec = read_task_file(builtin_path(name)).spec
        out[name] = TaskSpec(name, spec.answer_type, spec.generation.max_new_tokens, spec.description,
                             spec.data.reader, builtin_path(name))
    return out


class _Builtins(Mapping):
    """The built-in tasks by name, read from their files when first asked for."""

    def __getitem__(self, name: str) -> TaskSpec:
        return _builtin_specs()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_builtin_specs())

    def __len__(self) -> int:
        return len(_builtin_specs())


TASKS: Mapping[str, TaskSpec] = _Builtins()


def task_overrides(task: str) -> list[str]:
    """The config overrides that name `task` on a command line: a built-in task's name, or a task file's path."""
    if task in TASKS:
        return [f"task.name={task}"]
    if task.endswith((".yaml", ".yml")) or Path(task).is_file():
        return ["task.name=null", f"task.file={task}"]
    raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}, or a task file (docs/tasks.md)")


def load_task(cfg: TaskConfig, seed: int = 0) -> TaskData:
    """Load a task's splits (a built-in task's file or the named one), carve the validation split from train,
    then apply the limits."""
    path = cfg.file if cfg.file is not None else builtin_path(cfg.name)
    data = load_task_file(path, cfg.spec, allow_hub=cfg.allow_hub_download, data_dir=cfg.data_dir, arith=cfg.arith)
    train, val = list(data.train), list(data.val)
    if cfg.val_fraction > 0 and val:
        raise ValueError(f"task.val_fraction: the task file {path} has its own val split; set it to 0")
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


def task_prompts_of(cfg: TaskConfig) -> TaskPrompts:
    """A task's prompts (with `task.spec` overrides) without reading its data."""
    path = cfg.file if cfg.file is not None else builtin_path(cfg.name)
    return file_prompts(read_task_file(path, cfg.spec))


def gold_rationale(task: str | None, record: Record) -> str | None:
    """The `reference` teacher's rationale for a record of built-in task `task` (its reader's), or, with `task`
    None (a task file over fields), the record's solution. A loaded task's own: TaskData.reference."""
    if task is None:
        return record.solution
    from .readers import READERS

    reader = TASKS[task].reader
    return READERS[reader].rationale(record) if reader else record.solution


__all__ = ["TASKS", "Record", "StepCheck", "TaskData", "TaskSpec", "check_steps", "gold_rationale", "load_task",
           "resolve_data_dir", "task_overrides", "task_prompts_of"]
