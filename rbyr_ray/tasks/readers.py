"""Named readers: the original formats of the built-in tasks' data, chosen by `data.reader` in a task file.

    data:
      reader: gsm8k              # JSON Lines of {question, answer}, the answer ending in "#### N"
      train: gsm8k/train.jsonl   # relative to the benchmark data folder (task.data_dir, $RBYR_DATA_DIR)
      test: gsm8k/test.jsonl

A reader makes the records itself (question, gold answer, choices, the dataset's own solution, tags; ids
"<task>-<split>-<index>") and says how the `reference` teacher turns a record's solution into a rationale.
The built-in tasks (builtin/*.yaml) are task files over these readers; a new benchmark in one of these formats
is a new task file, with no Python to write.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ..config import ArithConfig
from . import benchmarks
from .arith import generate
from .records import Record

SPLITS = ("train", "test", "val")


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


@dataclass(frozen=True)
class ReadContext:
    """What a reader gets from the task file: its sources, options, and the experiment's task settings."""

    task: str  # the task's name: record ids
    sources: dict[str, str]  # "train", "test", "val", "source" -> the path as the task file writes it
    options: dict = field(default_factory=dict)
    data_dir: str | None = None  # task.data_dir: relative paths are read from the benchmark data folder
    arith: ArithConfig = field(default_factory=ArithConfig)  # task.arith, for the arith generator
    where: Callable[[str], str] = str  # "data.options" -> "asdiv.yaml:7: data.options" (error messages)

    def resolve(self, path: str) -> Path:
        """A path named by the task file: absolute as is, else in the benchmark data folder."""
        return Path(path) if Path(path).is_absolute() else resolve_data_dir(self.data_dir) / path

    def source(self, name: str) -> Path:
        if name not in self.sources:
            raise ValueError(f"{self.where('data')}: the {name!r} source is missing")
        path = self.resolve(self.sources[name])
        if not path.exists():
            raise ValueError(f"{self.where(f'data.{name}')}: no such file: {path}")
        return path

    def splits(self) -> dict[str, Path]:
        """The train/test(/val) files; train and test are required."""
        return {s: self.source(s) for s in SPLITS if s in self.sources or s != "val"}

    def options_as(self, model: type[BaseModel]) -> BaseModel:
        try:
            return model.model_validate(self.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{self.where('data.options')}: data.options.{key}: {first['msg']}") from None


@dataclass(frozen=True)
class Reader:
    read: Callable[[ReadContext], dict[str, list[Record]]]  # the splits: "train", "test" (, "val")
    rationale: Callable[[Record], str | None]  # the reference teacher's rationale from the record's solution
    description: str


def _each_split(read_split: Callable[[Path, str, str], list[Record]]) -> Callable[[ReadContext], dict]:
    """A reader of one file per split."""
    return lambda ctx: {split: read_split(path, ctx.task, split) for split, path in ctx.splits().items()}


def _arith(ctx: ReadContext) -> dict[str, list[Record]]:
    data = generate(ctx.arith, ctx.task)
    return {"train": data.train, "test": data.test}


def _solution(record: Record) -> str | None:
    return record.solution


READERS: dict[str, Reader] = {
    "arith": Reader(_arith, _solution, "seeded arithmetic word problems from task.arith; no files"),
    "gsm8k": Reader(_each_split(benchmarks.gsm8k_split), benchmarks.gsm8k_rationale,
                    'JSON Lines {question, answer}; the answer a worked solution ending in "#### N"'),
    "svamp": Reader(_each_split(benchmarks.svamp_split), benchmarks.svamp_rationale,
                    "a JSON array of {Body, Question, Equation, Answer, Type, ID}; question = Body + Question"),
    "multiarith": Reader(_each_split(benchmarks.multiarith_split), benchmarks.multiarith_rationale,
                         "a JSON array of {sQuestion, lEquations, lSolutions, iIndex}"),
    "asdiv": Reader(benchmarks.read_asdiv, benchmarks.asdiv_rationale,
                    "ASDiv's XML (`source`) split by fold files (data.options: folds, train_folds, test_folds)"),
    "csqa": Reader(_each_split(benchmarks.csqa_split), benchmarks.csqa_rationale,
                   "JSON Lines {id, question: {stem, choices: [{label, text}]}, answerKey}"),
    "strategyqa": Reader(_each_split(benchmarks.strategyqa_split), benchmarks.strategyqa_rationale,
                         "JSON Lines {qid, term, question, answer: bool, facts: [...], decomposition}"),
}
