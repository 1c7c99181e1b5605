"""Answer extraction and grading (METHOD.md "Answer extraction"). Pure text processing: nothing is evaluated.

    >>> grade("numeric", "5 + 13 = 18.\\nAnswer: 18.0 apples", "18")
    True
    >>> extract_answer("choice", "so it is (c)")
    'c'

Cue order: the first `Answer:` wins (the format every prompt asks for); without one, the last
"the answer is" (a model that corrects itself says it again at the end).

Students and teachers are read differently. A student stops at a blank line, so `extract_answer` reads only its
first block. A teacher (a real LLM) writes paragraphs, LaTeX and markdown, so `extract_teacher_answer` reads the
whole text and takes the answer it states last, by this precedence:

1. the last `Answer:` cue that states an answer (`Final Answer:`, `**Answer: 96**`, `\\[ \\text{Answer: } 96 \\]`;
   "Final answer: Answer: 9" states 9; an empty `Answer:` line is read on its next non-empty line);
2. else the last `\\boxed{...}`;
3. else the last "the (final/correct) answer is ...";
4. else the last number (yes/no: the last yes or no; choice: the last "(x)").

A stated "X = 12" or "57 + 39 = 96" states what follows the last "=". The reasoning kept is the text before
that statement, with markup folded away (see `plain_text`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------------------- teachers

_FENCE = re.compile(r"^[ \t]*```[\w+-]*[ \t]*$", re.MULTILINE)
_LATEX_DELIMITERS = re.compile(r"\\\[|\\\]|\\\(|\\\)|\$\$")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_SYMBOLS = {r"\times": "×", r"\cdot": "·", r"\div": "÷", r"\$": "$", r"\%": "%", r"\,": " ", r"\;": " ",
                  r"\!": "", r"\quad": " ", r"\qquad": " ", r"\left": "", r"\right": "", "{,}": ","}
_LATEX_SYMBOL = re.compile("|".join(re.escape(k) + (r"(?![a-zA-Z])" if k[-1].isalpha() else "")
                                    for k in sorted(_LATEX_SYMBOLS, key=len, reverse=True)))
_EMPHASIS = re.compile(r"\*\*|__|(?<![\w*])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![\w*])|`")
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+", re.MULTILINE)
_BOXED = re.compile(r"\\boxed\s*\{")
_TEACHER_ANSWER_LINE = re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s*:", re.IGNORECASE)
_TEACHER_ANSWER_IS = re.compile(
    r"\b(?:the\s+)?(?:final\s+|correct\s+)?answer\s+(?:is|would be|will be|should be)\b\s*:?", re.IGNORECASE)
# What is left at the end of the reasoning once the answer statement is cut off: "Therefore, the final answer is".
_DANGLING = re.compile(
    r"(?:[\s,;:=\-–—$]+|\b(?:so|thus|therefore|hence|then|and)|"
    r"\b(?:the\s+)?(?:final\s+|correct\s+)?answer(?:\s+(?:is|would be|will be|should be))?)$", re.IGNORECASE)


def plain_text(text: str) -> str:
    """A model's markup folded away, lines kept: code fences, LaTeX delimiters (`\\[ \\]`, `\\( \\)`, `$$`),
    `\\text{..}`-like wrappers, `\\frac{a}{b}` (to a/b), `\\times`/`\\cdot`/`\\div` (to × · ÷), markdown emphasis and
    heading marks. `\\boxed{..}` stays (it marks a stated answer).

    >>> plain_text("**Step 1:** \\\\( 57 \\\\times 2 = 114 \\\\)")
    'Step 1: 57 × 2 = 114'
    """
    text = _FENCE.sub("", text)
    text = _LATEX_DELIMITERS.sub(" ", text)
    for _ in range(3):  # nested wrappers: \text{\textbf{96}}
        text = _LATEX_WRAPPERS.sub(r"\1", text)
    text = _LATEX_FRACTION.sub(lambda m: _fraction(m.group(1), m.group(2)), text)
    text = _LATEX_SYMBOL.sub(lambda m: _LATEX_SYMBOLS[m.group(0)], text)
    text = _EMPHASIS.sub(lambda m: m.group(1) or "", text)
    text = _HEADING.sub("", text)
    return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n"))


def _fraction(num: str, den: str) -> str:
    num, den = num.strip(), den.strip()
    simple = re.compile(r"[\w.]+")
    return (num if simple.fullmatch(num) else f"({num})") + "/" + (den if simple.fullmatch(den) else f"({den})")


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every `\\boxed{...}`, braces balanced."""
    out = []
    for match in _BOXED.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((match.start(), i, text[match.end():i - 1]))
    return out


def _stated(answer_type: AnswerType, text: str, choices: tuple[str, ...] | list[str]) -> str | None:
    """The answer a statement gives right at its start ("96 apples.", "x = 12", "(b) refrigerator", "Yes.")."""
    text = text.replace("\\boxed", "").replace("{", " ").replace("}", " ").strip()
    if answer_type == "numeric":
        if "=" in text:  # "X = 12", "57 + 39 = 96": the result follows the last "="
            text = text.rsplit("=", 1)[1]
        match = _NUMBER.search(text)
        return format_number(_to_fraction(match)) if match else None
    if answer_type == "yesno":
        match = _YESNO_AFTER_CUE.match(text) or _YESNO.search(text)
        return {"true": "yes", "false": "no"}.get(match.group(1).lower(), match.group(1).lower()) if match else None
    if answer_type == "choice":
        match = _BARE_LETTER.match(text) or _PAREN_LETTER.search(text)
        if match:
            return match.group(1).lower()
        words = text.lower()
        for letter, choice in zip("abcde", choices):
            choice = choice.strip().lower()
            if choice and words.startswith((choice, f"{letter} {choice}")):
                return letter
        return None
    from .graders import extract_other  # `text` and user graders (task files): the statement's first line

    line = text.split("\n", 1)[0].strip()
    return extract_other(answer_type, f"Answer: {line}") if line else None


def _line_after(text: str, pos: int) -> str:
    """The rest of the line from `pos`; when that is blank, the next non-empty line ("Answer:\\n96")."""
    line, _, rest = text[pos:].partition("\n")
    if line.strip():
        return line
    return next((other for other in rest.split("\n") if other.strip()), "")


def _reasoning_before(text: str, pos: int) -> str:
    """The text before `pos` without a dangling lead-in ("Therefore, the final answer is")."""
    head = text[:pos]
    while (match := _DANGLING.search(head)) and match.group(0):
        head = head[:match.start()]
    return head.strip()


@dataclass(frozen=True)
class TeacherAnswer:
    """A teacher's final answer (None: none stated), the rule that found it, and the reasoning before it
    (markup folded away, lines kept; `rationale` is that reasoning on one line, as the student is trained on)."""

    answer: str | None
    reasoning: str
    rule: str | None  # "answer_line", "boxed", "answer_is", "last" (the last number / yes-no / letter)

    @property
    def rationale(self) -> str:
        from .prompts import fold_rationale

        return fold_rationale(self.reasoning)


def extract_teacher_answer(answer_type: AnswerType, text: str | None,
                           choices: tuple[str, ...] | list[str] = ()) -> TeacherAnswer:
    """Read a teacher's whole answer: its final answer, by the precedence of the module docstring, and the
    reasoning before it.

    >>> r = extract_teacher_answer("numeric", "Initial apples = 37.\\n\\n37 + 59 = 96\\n\\n**Answer: 96**")
    >>> r.answer, r.rule, r.rationale
    ('96', 'answer_line', 'Initial apples = 37. 37 + 59 = 96')
    """
    if answer_type not in ("numeric", "yesno", "choice"):
        from .graders import extract_other

        extract_other(answer_type, "")  # an unknown answer type is an error, whatever the text
    plain = plain_text(text or "")
    for cue in reversed(list(_TEACHER_ANSWER_LINE.finditer(plain))):
        answer = _stated(answer_type, _line_after(plain, cue.end()), choices)
        if answer is not None:
            return TeacherAnswer(answer, _reasoning_before(plain, cue.start()), "answer_line")
    for start, end, content in reversed(_boxes(plain)):
        answer = _stated(answer_type, plain_text(content), choices)
        if answer is None:
            continue
        line_start = plain.rfind("\n", 0, start) + 1
        if _reasoning_before(plain[line_start:start], start - line_start):
            # The box ends a sentence of reasoning ("57 + 39 = \\boxed{96}"): kept, unboxed.
            reasoning = plain[:start] + plain_text(content).strip()
        else:  # a line that only states the answer ("The final answer is \\boxed{96}")
            reasoning = _reasoning_before(plain, line_start)
        return TeacherAnswer(answer, reasoning.strip(), "boxed")
    for cue in reversed(list(_TEACHER_ANSWER_IS.finditer(plain))):
        answer = _stated(answer_type, _line_after(plain, cue.end()), choices)
        if answer is not None:
            return TeacherAnswer(answer, _reasoning_before(plain, cue.start()), "answer_is")
    if answer_type == "numeric":
        values = (_to_fraction(m) for m in reversed(list(_NUMBER.finditer(plain))))
        last = format_number(next((v for v in values if v is not None), None))
    elif answer_type == "yesno":
        found = _YESNO.findall(plain)
        last = found[-1].lower() if found else None
    elif answer_type == "choice":
        found = _PAREN_LETTER.findall(plain)
        last = found[-1].lower() if found else None
    else:  # `text` and user graders: the last non-empty line states the answer
        lines = plain.rstrip().rsplit("\n", 1)
        last = _stated(answer_type, lines[-1], choices)
        if last is not None:
            return TeacherAnswer(last, _reasoning_before(plain, len(lines[0]) if len(lines) > 1 else 0), "last")
    return TeacherAnswer(last, _reasoning_before(plain, len(plain)), "last" if last is not None else None)
