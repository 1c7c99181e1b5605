"""Answer extraction and grading (METHOD.md "Answer extraction"). Pure text processing: nothing is evaluated.

    >>> grade("numeric", "5 + 13 = 18.\\nAnswer: 18.0 apples", "18")
    True
    >>> extract_answer("choice", "so it is (c)")
    'c'
"""

from __future__ import annotations

import re
from fractions import Fraction

from .records import AnswerType

# "1,234", "12", "-3.5", "3/4", "$1,200.50"; a minus only where it is not a hyphen between two tokens.
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−])?\$?(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
)
_ANSWER_CUE = re.compile(r"answer\s*(?:is|:)|answer\s+is\s*:?", re.IGNORECASE)
_YESNO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"\(\s*([a-eA-E])\s*\)")
_BARE_LETTER = re.compile(r"^\s*\(?([a-eA-E])(?:\)|\.|,|:|;|!|\s*$)", re.MULTILINE)


def first_block(text: str) -> str:
    """The text up to the first blank line (the student's stop sequence)."""
    return re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0] if text else ""


def _after_cue(text: str) -> str | None:
    """The text after the first `Answer:` / `the answer is`, or None."""
    match = _ANSWER_CUE.search(text)
    return text[match.end():] if match else None


def parse_number(text: str) -> Fraction | None:
    """Parse one number as written by a model ("1,234", "-3.50", "3/4") to an exact Fraction."""
    match = _NUMBER.search(text)
    return _to_fraction(match) if match else None


def _to_fraction(match: re.Match) -> Fraction | None:
    try:
        value = Fraction(match.group("num").replace(",", ""))
        if match.group("den"):
            den = Fraction(match.group("den"))
            if den == 0:
                return None
            value /= den
    except (ValueError, ZeroDivisionError):
        return None
    return -value if match.group("sign") else value


def extract_numeric(text: str) -> str | None:
    block = first_block(text)
    tail = _after_cue(block)
    if tail is not None:
        match = _NUMBER.search(tail)
        if match:
            return format_number(_to_fraction(match))
    matches = list(_NUMBER.finditer(block))
    for match in reversed(matches):
        value = _to_fraction(match)
        if value is not None:
            return format_number(value)
    return None


def format_number(value: Fraction | None) -> str | None:
    """Canonical text of a number: integers plainly, other values as a fraction "p/q" (exact)."""
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def extract_yesno(text: str) -> str | None:
    block = first_block(text)
    tail = _after_cue(block)
    if tail is not None:
        match = _YESNO.search(tail)
        if match:
            return match.group(1).lower()
    matches = _YESNO.findall(block)
    return matches[-1].lower() if matches else None


def extract_choice(text: str, choices: tuple[str, ...] | list[str] = ()) -> str | None:
    block = first_block(text)
    tail = _after_cue(block)
    if tail is not None:
        match = _PAREN_LETTER.search(tail) or _BARE_LETTER.match(tail)
        if match:
            return match.group(1).lower()
        # "Answer: a lot of people" -> the choice whose text follows the cue
        lowered = tail.strip().lower()
        for i, choice in enumerate(choices):
            if choice and lowered.startswith(choice.lower()):
                return "abcde"[i]
    letters = _PAREN_LETTER.findall(block)
    return letters[-1].lower() if letters else None


def extract_answer(answer_type: AnswerType, text: str, choices: tuple[str, ...] | list[str] = ()) -> str | None:
    if answer_type == "numeric":
        return extract_numeric(text)
    if answer_type == "yesno":
        return extract_yesno(text)
    if answer_type == "choice":
        return extract_choice(text, choices)
    raise ValueError(f"unknown answer type {answer_type!r}")


def answers_match(answer_type: AnswerType, predicted: str | None, gold: str) -> bool:
    if predicted is None:
        return False
    if answer_type == "numeric":
        a, b = parse_number(predicted), parse_number(str(gold))
        if a is None or b is None:
            return False
        return a == b or abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    return predicted.strip().lower() == str(gold).strip().lower()


def grade(answer_type: AnswerType, text: str, gold: str, choices: tuple[str, ...] | list[str] = ()) -> bool:
    """True when the final answer extracted from `text` equals the gold answer."""
    return answers_match(answer_type, extract_answer(answer_type, text, choices), gold)
