"""The one record type every task produces."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

AnswerType = Literal["numeric", "yesno", "choice"]


@dataclass(frozen=True)
class Record:
    """A question with its gold answer.

    `answer` is normalised per answer type: a number as text ("18", "-2.5", "1/3" only when no finite
    decimal is exact; see grading.format_number) for numeric tasks,
    "yes"/"no" for yes/no tasks, a letter "a".."e" for multiple choice. `solution` is the dataset's own
    worked solution when it has one (GSM8K steps, an equation, StrategyQA facts), raw.
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

    def split(self, name: str) -> list[Record]:
        if name not in ("train", "test", "val"):
            raise ValueError(f"unknown split {name!r}: expected train, test or val")
        return getattr(self, name)
