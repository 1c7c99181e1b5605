"""Answer extraction and grading (METHOD.md "Answer extraction"). Pure text processing: nothing is evaluated.

    >>> grade("numeric", "5 + 13 = 18.\\nAnswer: 18.0 apples", "18")
    True
    >>> extract_answer("choice", "so it is (c)")
    'c'

Cue order: the first `Answer:` wins (the format every prompt asks for); without one, the last
"the answer is" (a model that corrects itself says it again at the end).
"""

from __future__ import annotations

import re
from fractions import Fraction

from .records import AnswerType

# "1,234", "12", "-3.5", "3/4", "$1,200.50"; a minus only where it is not a hyphen between two tokens.
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−])?[$€£]?(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
)
_ANSWER_COLON = re.compile(r"\banswer\s*:", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\banswer\s+(?:is|would be|will be)\s*:?", re.IGNORECASE)
_YESNO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
# Right after a cue a model may also write true/false; elsewhere those words are too common to count.
_YESNO_AFTER_CUE = re.compile(r"^\W*(yes|no|true|false)\b", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"\(\s*([a-eA-E])\s*\)")
# "c", "C.", "(c)", "c)", "option C": a bare letter counts only when punctuation or the end follows it
# ("a lot" is no answer).
_BARE_LETTER = re.compile(r"\W*?(?:(?:option|choice)\s+)?\(?([a-eA-E])(?:\)|[.,:;!*]|\s*$)", re.IGNORECASE)


def first_block(text: str) -> str:
    """The text up to the first blank line (the student's stop sequence)."""
    return re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0] if text else ""


def _after_cue(text: str) -> str | None:
    """The text after the first `Answer:`, else after the last "the answer is", else None."""
    match = _ANSWER_COLON.search(text)
    if match is None:
        match = next(reversed(list(_ANSWER_IS.finditer(text))), None)
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


def format_number(value: Fraction | None) -> str | None:
    """Canonical text of a number: "18", "-2.5"; a fraction "1/3" only when no finite decimal is exact."""
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    places, scaled = 0, abs(value)
    while scaled.denominator != 1 and places < 24:
        scaled *= 10
        places += 1
    if scaled.denominator != 1:  # 1/3, 2/7: no terminating decimal
        return f"{value.numerator}/{value.denominator}"
    digits = str(scaled.numerator).rjust(places + 1, "0")
    return f"{'-' if value < 0 else ''}{digits[:-places]}.{digits[-places:]}"


def extract_numeric(text: str) -> str | None:
    block = first_block(text)
    tail = _after_cue(block)
    if tail is not None:
        line = tail.split("\n", 1)[0]
        # "Answer: 2 + 3 = 5": the result is what follows the last "=" on the answer's line.
        if "=" in line:
            tail = line.rsplit("=", 1)[1]
        match = _NUMBER.search(tail)
        if match and (value := _to_fraction(match)) is not None:
            return format_number(value)
    for match in reversed(list(_NUMBER.finditer(block))):
        value = _to_fraction(match)
        if value is not None:
            return format_number(value)
    return None


def extract_yesno(text: str) -> str | None:
    block = first_block(text)
    tail = _after_cue(block)
    if tail is not None:
        match = _YESNO_AFTER_CUE.match(tail) or _YESNO.search(tail)
        if match:
            word = match.group(1).lower()
            return {"true": "yes", "false": "no"}.get(word, word)
    matches = _YESNO.findall(block)
    return matches[-1].lower() if matches else None


def extract_choice(text: str, choices: tuple[str, ...] | list[str] = ()) -> str | None:
    block = first_block(text)
    tail = _after_cue(block)
    if tail is not None:
        line = tail.split("\n", 1)[0]
        match = _BARE_LETTER.match(line) or _PAREN_LETTER.search(line)
        if match:
            return match.group(1).lower()
        # "Answer: E refrigerator" or "Answer: refrigerator": the choice whose text follows the cue.
        words = line.strip().lower()
        for letter, choice in zip("abcde", choices):
            choice = choice.strip().lower()
            if choice and words.startswith((choice, f"{letter} {choice}")):
                return letter
    letters = _PAREN_LETTER.findall(block)
    return letters[-1].lower() if letters else None


def extract_answer(answer_type: AnswerType, text: str, choices: tuple[str, ...] | list[str] = ()) -> str | None:
    if answer_type == "numeric":
        return extract_numeric(text)
    if answer_type == "yesno":
        return extract_yesno(text)
    if answer_type == "choice":
        return extract_choice(text, choices)
    from .graders import extract_other  # `text` and user graders (task files)

    return extract_other(answer_type, text)


def answers_match(answer_type: AnswerType, predicted: str | None, gold: str) -> bool:
    if predicted is None:
        return False
    if answer_type == "numeric":
        a, b = parse_number(predicted), parse_number(str(gold))
        if a is None or b is None:
            return False
        # Exact for what models write ("0.5" vs "1/2"); the tolerance absorbs golds stored as rounded floats.
        return a == b or abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    if answer_type not in ("yesno", "choice"):
        from .graders import match_other  # `text` and user graders (task files)

        return match_other(answer_type, predicted, gold)
    return predicted.strip().lower() == str(gold).strip().lower()


def grade(answer_type: AnswerType, text: str, gold: str, choices: tuple[str, ...] | list[str] = ()) -> bool:
    """True when the final answer extracted from `text` equals the gold answer."""
    return answers_match(answer_type, extract_answer(answer_type, text, choices), gold)
