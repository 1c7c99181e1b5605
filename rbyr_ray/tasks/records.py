"""The one record type every task produces."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

BuiltinAnswerType = Literal["numeric", "yesno", "choice", "text"]
# One of the built-in types, or a task file's own grader named "package.module:function" (tasks/graders.py).
AnswerType = str


@dataclass(frozen=True)
class Record:
    """A question with its gold answer.

    `answer` is normalised per answer type: a number as text ("18", "-2.5", "1/3" only when no finite
    decimal is exact; see grading.format_number) for numeric tasks,
    "yes"/"no" for yes/no tasks, a letter "a".."e" for multiple choice, the text as written for `text` and
    user graders. `solution` is the dataset's own worked solution when it has one (GSM8K steps, an equation,
    StrategyQA facts), raw as its named reader reads it (TaskData.reference makes the rationale); a task file's
    fields-based solution is cut to its reasoning (tasks/taskfile.py).
    """

    id: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    solution: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def to_row(self) -> dict:
        """A flat row for Ray Data / Parquet (tags as JSON text, choices as a list)."""
        return {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "choices": list(self.choices),
            "solution": self.solution,
            "tags": json.dumps(self.tags, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict) -> Record:
        tags = row.get("tags") or "{}"
        return cls(
            id=str(row["id"]),
            question=str(row["question"]),
            answer=str(row["answer"]),
            choices=tuple(row.get("choices") or ()),
            solution=row.get("solution"),
            tags=json.loads(tags) if isinstance(tags, str) else dict(tags),
        )


@dataclass(frozen=True)
class TaskData:
    name: str
    answer_type: AnswerType
    train: list[Record]
    test: list[Record]
    val: list[Record] = field(default_factory=list)
    # What every stage needs besides the records, so that none looks the task up by name: the exam/eval
    # generation budget, and the student's and teacher's prompts with the student's stop (taskfile.TaskPrompts).
    max_new_tokens: int = 256
    prompts: Any = None
    source: str | None = None  # the task file the task was loaded from (a built-in's is in tasks/builtin/)
    # A named reader's rationale from a record's raw solution (readers.Reader.rationale); None: the solution is
    # one already (a task file's, cut to its reasoning when loaded).
    rationale: Callable[[Record], str | None] | None = None

    def split(self, name: str) -> list[Record]:
        if name not in ("train", "test", "val"):
            raise ValueError(f"unknown split {name!r}: expected train, test or val")
        return getattr(self, name)

    def reference(self, record: Record) -> str | None:
        """The worked solution the `reference` teacher answers with (None: the record has none)."""
        return self.rationale(record) if self.rationale is not None else record.solution
