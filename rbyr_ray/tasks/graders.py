"""Answer types beyond numeric / yes-no / choice: `text`, and a user's grader named `package.module:function`.

`grading.extract_answer` and `grading.answers_match` hand these types here, so every caller (exam, teacher
gate, training data, `score`) grades a task file's answers with no change of its own.

text
    The final answer is the text after the first `Answer:` of the output's first block (else after the last
    "the answer is", else the block's last line). Predicted and gold are equal when their normalised forms
    are: Unicode NFKC, lower case, whitespace runs as one space, and punctuation and whitespace at either end
    removed ("  The Nile. " == "the nile"). Inner punctuation counts ("U.S." != "US").

package.module:function
    `function(answer: str, gold: str) -> bool`, where `answer` is the final answer text as read for `text`
    (before normalisation) and `gold` the record's gold answer as written in the data. It must be importable
    where the exam and the teacher stage run: on a cluster, ship it with the job's `runtime_env`
    (`py_modules` or `working_dir`). Nothing a model wrote is evaluated; the function only receives text.
"""

from __future__ import annotations

import importlib
import re
import string
import unicodedata
from collections.abc import Callable
from functools import cache

BUILTIN_TYPES = ("numeric", "yesno", "choice", "text")
_GRADER_NAME = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_EDGE = string.punctuation + string.whitespace + "“”‘’«»…–—"


class GraderError(ValueError):
    """A grader that cannot be imported, or that raised; the message names it."""


def is_grader_name(answer_type: str) -> bool:
    return bool(_GRADER_NAME.match(answer_type))


def normalise_text(text: str) -> str:
    """The `text` answer type's normal form (see the module doc)."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    return re.sub(r"\s+", " ", text).strip(_EDGE)


def final_answer_text(text: str) -> str | None:
    """The final answer as written: after the first `Answer:` of the first block, else after the last
    "the answer is", else the block's last non-empty line; None for an empty output."""
    from .grading import _after_cue, first_block  # one cue reader for every answer type

    block = first_block(text)
    tail = _after_cue(block)
    if tail is not None:
        line = tail.strip().split("\n", 1)[0].strip()
        return line or None
    lines = [line.strip() for line in block.split("\n") if line.strip()]
    return lines[-1] if lines else None


@cache
def load_grader(name: str) -> Callable[[str, str], bool]:
    """The function `package.module:function`; a GraderError when it cannot be imported or is not callable."""
    if not is_grader_name(name):
        raise GraderError(f"grader {name!r}: expected package.module:function")
    module_name, func_name = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see, in one line
        raise GraderError(f"grader {name!r}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise GraderError(f"grader {name!r}: {module_name} has no function {func_name}")
    return func


def extract_other(answer_type: str, text: str) -> str | None:
    """extract_answer for `text` and user graders: the final answer text (normalised for `text`)."""
    if answer_type != "text" and not is_grader_name(answer_type):
        raise ValueError(f"unknown answer type {answer_type!r}")
    answer = final_answer_text(text)
    if answer is None:
        return None
    return (normalise_text(answer) or None) if answer_type == "text" else answer


def match_other(answer_type: str, predicted: str, gold: str) -> bool:
    """answers_match for `text` and user graders."""
    if answer_type == "text":
        return normalise_text(predicted) == normalise_text(gold) != ""
    grader = load_grader(answer_type)
    try:
        return bool(grader(predicted, str(gold)))
    except Exception as exc:  # noqa: BLE001 - a user's grader that raises is reported, not swallowed
        raise GraderError(f"grader {answer_type!r} raised {type(exc).__name__}: {exc} "
                          f"(answer {predicted!r}, gold {gold!r})") from None
