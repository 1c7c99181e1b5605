"""Step checking: every arithmetic claim `<expression> = <number>` of a rationale, computed exactly.

    >>> check_steps("3 * 4 = 12. 12 + 7 = 20.")
    StepCheck(checked=2, false_steps=['12 + 7 = 20'], unchecked=0)

The teacher-quality gate (`teacher.gate: steps`) uses it to reject a rationale that reaches the right answer
by a false step; the exam uses it to mark such student samples. Nothing is ever evaluated as code: the text
is tokenized here and the expressions are parsed by `benchmarks.parse_expression` (recursive descent over
numbers, + - * / and parentheses) and computed with `fractions.Fraction`.

What is a claim. Every "=" of the text is one ("==", "<=", ">=", "!=", "=>", "~=" are not). Its left side is
the run of numbers, operators (+ - − – * × x ÷ / ·) and parentheses just before it; its right side the number,
or expression, just after it. Numbers may carry thousands separators, decimals, a currency sign or a percent
sign; GSM8K's calculator annotations `<<48/2=24>>` are claims too (an annotation and the text around it that
repeats it count once). A chain "2 + 3 = 5 + 1 = 6" is two claims, "2 + 3 = 5 + 1" and "5 + 1 = 6"; a right
side that is an expression is true when it has the left side's value ("3 * (4 + 2) = 3 * 6") or starts with it
(a running total, "2 + 3 = 5 + 1"). A line break ends a clause, and so does a number right after another
("= 8 8 + 2 = 10", from a student that drops its periods).

Checked or unchecked. A claim that cannot be read with certainty is `unchecked`, never wrong: nothing computed
("5 = 5"), a variable or word on either side ("x = 5", "1 hour = 60 minutes", "Total = ...", "= 24/Y"), a
number that a word qualifies or labels ("half of 48 = 24", "3 times 4 + 2 = 14": the run would miss the word;
"day 1 * 2"), another scale or unit after the result ("= 5 million", "$1 / 2 = 50 cents"), times, codes and
other separators ("3:15", "0900", "1,5", "80 000"), implicit products ("3(4 + 2)", "(1/2) 278"), exponents
("2^3"), mixed numbers ("1 1/2"), division by zero, or anything that does not parse.

Ambiguity never makes a step false: a percent sign is read both as /100 and as a plain number, a detached
leading "-" both as a minus and as a bullet, "-30 -30/3" also as two clauses, a fraction after a division
("25 / 1/3", "14 / 1 / 4") also as one number, and a claim is false only when no reading makes it true.

Tolerance (rounded results). A stated number with d decimal places (d = 0 for an integer) matches the exact
value v when it equals v, or, when v has more than d decimal places, when |v - stated| < 10**-d: the stated
number is v rounded or truncated to d places ("10 / 3 = 3.33", "2 / 3 = 0.67" and "= 0.66", "7 / 2 = 4" and
"= 3" for whole buses or boxes). A value with at most d places must be stated exactly ("7 / 2 = 3.4" is false).
A right side that is an expression ("= 1/2") must be exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import product

from .benchmarks import evaluate, parse_expression
from .grading import format_number

__all__ = ["StepCheck", "check_steps"]


@dataclass
class StepCheck:
    """The arithmetic claims of a text: how many were computed, which of those are false, how many not read."""

    checked: int = 0                                      # claims parsed and computed (true or false)
    false_steps: list[str] = field(default_factory=list)  # each false claim as written
    unchecked: int = 0                                    # claims that could not be parsed

    @property
    def ok(self) -> bool:
        """No checked step is false (a text with nothing checkable is ok)."""
        return not self.false_steps


# Numbers mirror the grader's (`grading._NUMBER`): "1,234", "12.5", ".5", "$1,200", "50%"; the sign is an operator.
_TOKEN = re.compile(r"""
    (?P<num>(?:[$€£¥]\s?)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:\s?%)?)
  | (?P<op>[-+*/×÷·⋅−–])
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<eq>=)
  | (?P<word>[^\W\d_]+)
  | (?P<space>\s+)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)
_OPS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "×": "*", "x": "*", "X": "*", "·": "*", "⋅": "*",
        "/": "/", "÷": "/"}
# A word right before a number that makes the number an operand of more than the run shows, or a label
# ("day 1 * 2 = 20" means 10 pages * 2).
_OPERAND_WORDS = {"day", "days", "week", "weeks", "month", "months", "year", "years", "step", "steps", "part",
                  "case", "round", "level", "grade", "question", "problem", "line", "row", "chapter", "section",
                  "stage", "phase", "number", "no", "room", "floor", "times", "by", "plus", "minus", "over", "than",
                  "half", "twice", "double", "triple", "thrice", "quarter", "quarters", "third", "thirds", "fourth", "fourths", "fifth", "fifths",
                  "percent", "divided", "multiplied", "per", "from", "into", "more", "less", "squared", "cubed",
                  "x"}
# "of" is one when a number or such a word comes before it ("half of 48 + 2", "20% of 50 + 5"), not in "a
# total of 2 + 6".
# A word right after a result that scales it ("= 5 million") or raises it.
_MULTIPLIER_WORDS = {"hundred", "hundreds", "thousand", "thousands", "million", "millions", "billion", "billions",
                     "trillion", "trillions", "dozen", "dozens", "k", "m", "mn", "bn", "b", "lakh", "crore",
                     "squared", "cubed"}
# After a result: another unit of money than the left side's ("$1 / 2 = 50 cents").
_CENTS = {"cent", "cents", "pence", "penny", "pennies", "¢"}
# Characters that may stand right before a claim's left side without being part of its arithmetic.
_SAFE_BEFORE = set(".,;:!?\"'`[]{}<>“”‘’«»…→\n$")
# Characters right after a result that make it part of something else ("= 2^3", "= 5_1").
_UNSAFE_AFTER = set("^_\\")
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_LATEX = [(re.compile(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"((\1)/(\2))"), (re.compile(r"\\times"), "×"),
          (re.compile(r"\\cdot"), "·"), (re.compile(r"\\div"), "÷"), (re.compile(r"\\left|\\right"), ""),
          (re.compile(r"\\\$"), "$"), (re.compile(r"\\[()\[\]]"), " ")]
_MAX_RUN = 200  # tokens; a longer "expression" is not arithmetic someone wrote out


@dataclass
class _Tok:
    kind: str          # num, op, lp, rp, eq, word, other (spaces are dropped; `spaced` remembers them)
    text: str
    start: int
    end: int
    spaced: bool       # whitespace right before this token
    value: Fraction | None = None
    decimals: int = 0
    pct: bool = False
    tainted: bool = False  # part of a time, a European decimal or a name ("3:15", "1,5", "x2")
    after_letter: bool = False  # glued to a letter before it: a name ("x2"), unless that is a "x" product


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    spaced = True
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "space":
            spaced = True
            if "\n" not in m.group():
                continue
            kind = "other"  # a line break ends a clause
        tok = _Tok(kind, "\n" if kind == "other" and m.group().isspace() else m.group(), m.start(), m.end(), spaced)
        spaced = False
        if kind == "num":
            digits = re.sub(r"[^\d.]", "", tok.text)
            tok.value = Fraction(digits)
            tok.decimals = len(digits.split(".")[1]) if "." in digits else 0
            tok.pct = tok.text.endswith("%")
            after, before = text[m.end():m.end() + 2], text[max(0, m.start() - 2):m.start()]
            tok.after_letter = before[-1:].isalpha()
            # Also a leading zero: clock times and codes ("0900 - 0130"), or "80 000" with a space separator.
            tok.tainted = (bool(re.match(r"[.,:]\d", after)) or bool(re.fullmatch(r"\d[.,:]", before))
                           or bool(re.match(r"0\d", digits))
                           or bool(re.fullmatch(r"\d{3}", digits) and re.search(r"\d,\s+$", text[:m.start()])))
        elif kind == "eq":
            prev, nxt = text[m.start() - 1:m.start()], text[m.end():m.end() + 1]
            if prev in ("<", ">", "!", "=", "~", "≈") or nxt in ("=", ">"):
                tok.kind = "other"
        toks.append(tok)
    for i, tok in enumerate(toks):
        # "x" multiplies only between two operands, spaced alike ("3 x 4", "0.2x50"); otherwise it is a variable
        # or a word ("26=5+3x\n21=3x").
        if tok.kind == "word" and tok.text in ("x", "X"):
            prev = toks[i - 1] if i > 0 else None
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if (prev and nxt and prev.kind in ("num", "rp") and nxt.kind in ("num", "lp")
                    and tok.spaced == nxt.spaced):
                tok.kind = "op"
        if tok.kind == "num" and tok.after_letter and not (i > 0 and toks[i - 1].kind == "op"):
            tok.tainted = True
        # "20 percent" is "20%".
        if tok.kind == "word" and tok.text.lower() == "percent" and i > 0 and toks[i - 1].kind == "num":
            toks[i - 1].pct = True
            tok.kind = "drop"
    return [t for t in toks if t.kind != "drop"]


_ARITH = ("num", "op", "lp", "rp")


def _fraction(toks: list[_Tok], i: int) -> bool:
    """toks[i:i+3] is "a / b"."""
    return (i + 2 < len(toks) and toks[i].kind == "num" and toks[i + 1].kind == "op" and toks[i + 1].text == "/"
            and toks[i + 2].kind == "num")


def _glued_fraction(toks: list[_Tok], i: int) -> bool:
    """toks[i:i+3] is a fraction written without spaces ("1/3"), as in "25 / 1/3"."""
    return _fraction(toks, i) and not toks[i + 1].spaced and not toks[i + 2].spaced


def _grouped(toks: list[_Tok], i: int) -> bool:
    """toks[i:i+3] is a fraction a writer may mean as one number: glued ("25 / 1/3"), or divided by
    ("14 / 1 / 4 = 14 * 4")."""
    after_division = i > 0 and toks[i - 1].kind == "op" and _OPS[toks[i - 1].text] == "/"
    return _glued_fraction(toks, i) or (_fraction(toks, i) and after_division)


def _mixed(toks: list[_Tok], i: int) -> bool:
    """toks[i-1:i+3] is a mixed number ("1 1/2"): an integer, then a glued fraction."""
    return (i > 0 and toks[i - 1].kind == "num" and toks[i - 1].decimals == 0 and not toks[i - 1].pct
            and _glued_fraction(toks, i))


def _expr_text(toks: list[_Tok], pct_div: bool, group: bool = False) -> str:
    """The tokens as parse_expression's input: canonical numbers and operators; `group` brackets glued
    fractions ("25 / 1/3" as 25 / (1/3))."""
    parts = []
    close = -1
    for i, t in enumerate(toks):
        if group and i > close and _grouped(toks, i):
            parts.append("(")
            close = i + 2
        if t.kind == "num":
            number = format_number(t.value)
            parts.append(f"({number}/100)" if t.pct and pct_div else number)
        elif t.kind == "op":
            parts.append(_OPS[t.text])
        else:
            parts.append(t.text)
        if i == close:
            parts.append(")")
    return " ".join(parts)


def _values(toks: list[_Tok]) -> list[Fraction]:
    """The values of an expression under each reading of its percent signs and glued fractions; [] when it
    does not parse."""
    if not toks or len(toks) > _MAX_RUN:
        return []
    pct = (True, False) if any(t.kind == "num" and t.pct for t in toks) else (False,)
    group = (False, True) if any(_grouped(toks, i) for i in range(len(toks))) else (False,)
    out = []
    for pct_div, grouped in product(pct, group):
        try:
            out.append(evaluate(parse_expression(_expr_text(toks, pct_div, grouped))))
        except (ValueError, ZeroDivisionError, RecursionError):
            continue
    return out


def _has_op(toks: list[_Tok]) -> bool:
    """A binary operation: an operator after an operand (a leading minus is a sign)."""
    return any(t.kind == "op" and i > 0 and toks[i - 1].kind in ("num", "rp") for i, t in enumerate(toks))


def _matches(value: Fraction, stated: Fraction, decimals: int) -> bool:
    """`stated` (written with `decimals` places) is `value`, or `value` rounded or truncated to those places."""
    if value == stated:
        return True
    scale = Fraction(10) ** decimals
    return (value * scale).denominator != 1 and abs(value - stated) < 1 / scale


def _stated(tok: _Tok, negative: bool) -> list[tuple[Fraction, int]]:
    """(value, decimal places) of a stated result under each reading of its percent sign."""
    value = -tok.value if negative else tok.value
    return [(value, tok.decimals), (value / 100, tok.decimals + 2)] if tok.pct else [(value, tok.decimals)]


@dataclass
class _Claim:
    span: tuple[int, int] | None  # where it is written; None = unchecked
    true: bool = True
    key: tuple = ()               # canonical form, to recognise a GSM8K annotation repeated in the text
    after: tuple[int, int] | None = None  # the span of the token right after the "="


def _left(toks: list[_Tok], e: int) -> tuple[list[_Tok], _Tok | None] | None:
    """The arithmetic run before toks[e] (an "=") and the token before that run; None when unreadable."""
    start, clause = e, False
    i = e - 1
    while i >= 0 and toks[i].kind in _ARITH:
        start = i
        # Two operands side by side ("= 8 8 + 2", "2) 3 + 4"): a new clause starts at the second one.
        if toks[i].kind == "num" and i > 0 and toks[i - 1].kind in ("num", "rp"):
            if not toks[i].spaced or _mixed(toks, i) or _closes_group(toks, i - 1):
                return None  # "16,0000/10", "8 x 1 1/2", "(1/2) 278 + 11"
            clause = True
            break
        i -= 1
    run = toks[start:e]
    before = None if clause or start == 0 else toks[start - 1]
    if (before is not None and before.text == "and" and start >= 2 and toks[start - 2].kind == "num"
            and _glued_fraction(toks, start)):
        return None  # "21 x (1 and 1/3)"
    # Markdown emphasis and bullets: "**3 + 4** = 7", "* 3 + 4 = 7".
    while run and run[-1].kind == "op" and run[-1].text == "*":
        run.pop()
    glued = bool(run) and not run[0].spaced  # to the token before the run
    stars = 0
    while stars < len(run) and run[stars].kind == "op" and run[stars].text == "*":
        stars += 1
    if stars and (before is None or before.kind != "word" or (run[0].spaced and stars < len(run)
                                                               and not run[stars].spaced)):
        run = run[stars:]  # not "box * 3", where the "*" multiplies a word
    # An unmatched parenthesis at an end belongs to the prose: "(3 + 4 = 7)", "(so 3 + 4) = 7".
    while run and run[0].kind == "lp" and sum(t.kind == "lp" for t in run) > sum(t.kind == "rp" for t in run):
        run.pop(0)
    while run and run[-1].kind == "rp" and sum(t.kind == "rp" for t in run) > sum(t.kind == "lp" for t in run):
        run.pop()
    if not run:
        return None
    if before is not None:
        if before.kind == "word":
            word = before.text.lower()
            prior = toks[start - 2] if start >= 2 else None
            of_what = word == "of" and prior is not None and (
                prior.kind == "num" or (prior.kind == "word" and prior.text.lower() in _OPERAND_WORDS))
            if glued or run[0].kind == "op" or word in _OPERAND_WORDS or of_what:
                return None  # "x2 + 3", "apples + 3", "half of 48 + 2", "3 times 4 + 2"
        elif before.kind == "other" and before.text not in _SAFE_BEFORE:
            return None  # "2^3 + 1"
        elif before.kind == "other" and start >= 2 and toks[start - 2].kind in ("op", "lp"):
            return None  # ".8 + . 84 + .82": the arithmetic goes on through a stray mark
    if run[0].kind == "op" and _OPS[run[0].text] != "-":
        return None  # "/ 4 = 2": the left operand is missing
    return run, before


def _closes_group(toks: list[_Tok], i: int) -> bool:
    """toks[i] is a ")" that closes a "(" on its line (not a list number's "2)")."""
    if toks[i].kind != "rp":
        return False
    depth = 0
    for t in reversed(toks[:i + 1]):
        if t.kind == "other" and t.text == "\n":
            return False
        depth += (t.kind == "rp") - (t.kind == "lp")
        if depth == 0:
            return True
    return False


def _right(toks: list[_Tok], e: int) -> list[_Tok] | None:
    """The arithmetic after toks[e] (an "="): the longest prefix of its run that parses; None when unreadable."""
    first = e + 1
    while first < len(toks) and toks[first].kind == "op" and toks[first].text == "*":
        first += 1  # "= **7**"
    run: list[_Tok] = []
    j = first
    while j < len(toks) and toks[j].kind in _ARITH:
        if run and toks[j].kind in ("num", "lp") and run[-1].kind in ("num", "rp"):
            if (toks[j].kind == "lp" and not toks[j].spaced) or _mixed(toks, j):
                return None  # "= 3(4 + 2)": an implicit product; "= 1 1/2": a mixed number
            break  # "= 8 8 + 2": the next clause
        run.append(toks[j])
        j += 1
    for n in range(len(run), 0, -1):
        if not _values(run[:n]):
            continue
        nxt = toks[first + n] if first + n < len(toks) else None
        then = toks[first + n + 1] if first + n + 1 < len(toks) else None
        if nxt is not None:
            if nxt.kind == "word" and (nxt.text.lower() in _MULTIPLIER_WORDS or (len(nxt.text) == 1 and not nxt.spaced)):
                return None  # "= 5 million", "= 5A/5"
            if not nxt.spaced and (nxt.kind == "num" or (nxt.kind == "other" and nxt.text in _UNSAFE_AFTER)):
                return None  # "= 2^3"
            if nxt.kind == "op" and then is not None and then.kind == "word":
                return None  # "= 24/Y", "= 16 + x": the right side goes on with a variable
            if nxt.kind == "num" and re.fullmatch(r"\d{3}", nxt.text):
                return None  # "= 18 000": a space as the thousands separator
        rest = run[n:]
        markdown = rest and not rest[0].spaced and all(t.kind == "op" and t.text == "*" for t in rest)
        if rest and not markdown and j < len(toks) and toks[j].kind == "word":
            return None  # "= 1/2* (T+M)", but not "= 15** rolls"
        return run[:n]
    return None


def _claim(toks: list[_Tok], e: int) -> _Claim:
    nxt = toks[e + 1] if e + 1 < len(toks) else None
    after = (nxt.start, nxt.end) if nxt is not None else None
    left, right = _left(toks, e), _right(toks, e)
    if left is None or right is None:
        return _Claim(None, after=after)
    run, before = left
    if any(t.tainted for t in run + right if t.kind == "num"):
        return _Claim(None, after=after)
    unit = _next(toks, right[-1])
    if unit is not None and unit.text.lower() in _CENTS and any(t.text[:1] in "$€£¥" for t in run):
        return _Claim(None, after=after)  # "$1 / 2 = 50 cents"
    left_op, right_op = _has_op(run), _has_op(right)
    if not left_op and (not right_op or not (before is None or before.kind == "eq" or before.text == "\n")):
        # "5 = 5" computes nothing; in "so 15 = 10 + 5" or "i.e. 48 = 100% + 20%" the number on the left
        # may be any quantity the words name. Only a number that starts a line or a chain is read alone.
        return _Claim(None, after=after)
    # A detached leading "-" may be a bullet or a dash, and "-30 -30/3" may be two clauses (a sign glued to a
    # number after a space): read them both ways.
    readings = [run]
    if run[0].kind == "op" and len(run) > 1 and run[1].spaced:
        readings.append(run[1:])
    readings += [run[k:] for k in range(1, len(run) - 1) if run[k].kind == "op" and _OPS[run[k].text] == "-"
                 and run[k].spaced and not run[k + 1].spaced and run[k - 1].kind in ("num", "rp")]
    lefts = [v for r in readings for v in _values(r)]
    if not lefts:
        return _Claim(None, after=after)
    span = (run[0].start, right[-1].end)
    key = (tuple(_expr_text(run, True).split()), tuple(_expr_text(right, True).split()))
    first = right[0]
    lead = right[1] if first.kind == "op" and len(right) > 1 else first  # the number after a sign
    if not right_op:
        true = any(_matches(v, s, d) for v, (s, d) in product(lefts, _stated(lead, lead is not first)))
        return _Claim(span, true, key, after)
    # An expression on the right: the same value, or a running total that starts with the left's value.
    true = any(v == w for v, w in product(lefts, _values(right)))
    if not true and left_op and lead.kind == "num":
        true = any(_matches(v, s, d) for v, (s, d) in product(lefts, _stated(lead, lead is not first)))
    return _Claim(span, true, key, after)


def _next(toks: list[_Tok], tok: _Tok) -> _Tok | None:
    i = toks.index(tok) + 1
    while i < len(toks) and toks[i].kind == "op" and toks[i].text == "*":
        i += 1  # "= 50** cents"
    return toks[i] if i < len(toks) else None


def _claims(text: str) -> list[_Claim]:
    toks = _tokenize(text)
    return [_claim(toks, e) for e, tok in enumerate(toks) if tok.kind == "eq"]


def _normalize(text: str) -> str:
    for pattern, repl in _LATEX:
        text = pattern.sub(repl, text)
    return text


def check_steps(text: str | None) -> StepCheck:
    """Check every arithmetic claim `<expression> = <number>` of `text` exactly (see the module docstring).

    Returns StepCheck(checked, false_steps, unchecked): the claims computed, the false ones as written, and
    the claims that could not be parsed (never counted as wrong).
    """
    result = StepCheck()
    if not text:
        return result
    text = _normalize(text)

    def count(claim: _Claim, source: str) -> None:
        if claim.span is None:
            result.unchecked += 1
            return
        result.checked += 1
        if not claim.true:
            result.false_steps.append(" ".join(source[claim.span[0]:claim.span[1]].split()))

    # GSM8K calculator annotations: each is a claim; the text around them is checked with them removed.
    marks, notes, pieces, pos = [], [], [], 0
    for m in _ANNOTATION.finditer(text):
        pieces.append(text[pos:m.start()])
        marks.append(sum(len(p) for p in pieces))
        found = _claims(m.group(1))
        for claim in found:
            count(claim, m.group(1))
        notes.append({c.key for c in found if c.span is not None})
        pos = m.end()
    pieces.append(text[pos:])
    outer = "".join(pieces)
    for claim in _claims(outer):
        # "48/2 = <<48/2=24>>24": the text repeats the annotation right before it, which counted it already.
        at = next((i for i, p in enumerate(marks) if claim.after and claim.after[0] <= p <= claim.after[1]), None)
        if at is not None and (claim.span is None or claim.key in notes[at]):
            continue
        count(claim, outer)
    return result
