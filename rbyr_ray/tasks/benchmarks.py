"""The named readers of the six benchmarks' original formats and their reference rationales (docs/data.md).

    data = load_task(TaskConfig(name="gsm8k"))     # builtin/gsm8k.yaml: `data: {reader: gsm8k, ...}`
    gsm8k_rationale(record)                        # "Natalia sold 48/2 = 24 clips in May. ..."

Every reader raises ValueError naming the file and line of a malformed record, and logs a warning
with the count of records it skips on purpose (ASDiv answers that are not a single number).
The `*_rationale` functions turn a dataset's own worked solution into a one-line rationale in the student's
compact style; equations are computed by a small recursive-descent parser, never evaluated as code.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from .files import malformed as _malformed
from .files import read_json_array, read_jsonl
from .grading import format_number, grade
from .records import Record

if TYPE_CHECKING:
    from .readers import ReadContext

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------- file reading


def _get(obj: dict, key: str, kind: type | tuple[type, ...], path: Path, lineno: int):
    value = obj.get(key)
    # bool is an int in Python; a JSON true is never a valid number here.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _malformed(path, lineno, f"field {key!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def _clean(text: str) -> str:
    """Whitespace collapsed: questions must sit on one line of the student prefix."""
    return " ".join(text.split())


def _number_text(value: float | str, path: Path, lineno: int) -> str:
    try:
        return format_number(Fraction(str(value).replace(",", "").strip()))
    except (ValueError, ZeroDivisionError):
        raise _malformed(path, lineno, f"answer {value!r} is not a number") from None


# ------------------------------------------------------------------------------------- safe arithmetic

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|([-+*/()]))")


@dataclass(frozen=True)
class Op:
    """A binary operation node; leaves are Fractions."""

    op: str
    left: Op | Fraction
    right: Op | Fraction


def _tokenize(text: str) -> list[str]:
    tokens, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"unexpected {text[pos:pos + 10]!r} in expression {text!r}")
        tokens.append(match.group(1) or match.group(2))
        pos = match.end()
    return tokens


def parse_expression(text: str) -> Op | Fraction:
    """Parse numbers, + - * / and parentheses (recursive descent) into a tree. Raises ValueError."""
    tokens = _tokenize(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"expression {text!r} ends early")
        pos += 1
        return tokens[pos - 1]

    def expr() -> Op | Fraction:
        node = term()
        while peek() in ("+", "-"):
            node = Op(take(), node, term())
        return node

    def term() -> Op | Fraction:
        node = factor()
        while peek() in ("*", "/"):
            node = Op(take(), node, factor())
        return node

    def factor() -> Op | Fraction:
        token = take()
        if token == "-":
            inner = factor()
            # A negated number stays a leaf; a negated group becomes 0 - group.
            return -inner if isinstance(inner, Fraction) else Op("-", Fraction(0), inner)
        if token == "(":
            node = expr()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {text!r}")
            return node
        if token in "+*/)":
            raise ValueError(f"unexpected {token!r} in {text!r}")
        return Fraction(token)

    tree = expr()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r} in {text!r}")
    return tree


def evaluate(node: Op | Fraction) -> Fraction:
    if isinstance(node, Fraction):
        return node
    a, b = evaluate(node.left), evaluate(node.right)
    if node.op == "+":
        return a + b
    if node.op == "-":
        return a - b
    if node.op == "*":
        return a * b
    if b == 0:
        raise ValueError("division by zero")
    return a / b


def equation_steps(node: Op | Fraction) -> tuple[list[str], Fraction]:
    """One "a op b = c." sentence per operation, innermost first, and the value of the whole."""
    if isinstance(node, Fraction):
        return [], node
    left_steps, a = equation_steps(node.left)
    right_steps, b = equation_steps(node.right)
    value = evaluate(Op(node.op, a, b))
    step = f"{format_number(a)} {node.op} {format_number(b)} = {format_number(value)}."
    return left_steps + right_steps + [step], value


def _finish(sentences: list[str], gold: str) -> str:
    """Join the sentences; state the answer when a grader would not read it off the end
    (remainder and ceiling questions, GSM8K solutions whose last number is a unit or an ordinal)."""
    text = " ".join(sentences)
    if not text:
        return f"The answer is {gold}."
    if not grade("numeric", text, gold):
        text += f" So the answer is {gold}."
    return text


def _expression_rationale(expression: str, gold: str) -> str:
    return _finish(equation_steps(parse_expression(expression))[0], gold)


# ------------------------------------------------------------------------------------------ readers
# Each reads one split's file (`<name>_split(path, task, split)`), or all splits (`read_asdiv(ctx)`), in its
# dataset's original format; record ids are "<task>-<split>-<index>". readers.py names them.


def gsm8k_split(path: Path, task: str, split: str) -> list[Record]:
    records = []
    for i, (lineno, obj) in enumerate(read_jsonl(path)):
        solution = _get(obj, "answer", str, path, lineno)
        if "####" not in solution:
            raise _malformed(path, lineno, "the answer has no '#### N' line")
        steps, final = solution.rsplit("####", 1)
        records.append(Record(
            id=f"{task}-{split}-{i}",
            question=_clean(_get(obj, "question", str, path, lineno)),
            answer=_number_text(final, path, lineno),
            solution=solution,
            tags={"steps": str(len([s for s in steps.splitlines() if s.strip()]))},
        ))
    return records


def svamp_split(path: Path, task: str, split: str) -> list[Record]:
    records = []
    for i, (lineno, obj) in enumerate(read_json_array(path)):
        equation = _get(obj, "Equation", str, path, lineno)
        # The usual SVAMP question: Body and Question joined by a space (as zero-shot-CoT and reasoning-teacher do).
        body, question = _get(obj, "Body", str, path, lineno), _get(obj, "Question", str, path, lineno)
        records.append(Record(
            id=f"{task}-{split}-{i}",
            question=_clean(f"{body} {question}"),
            answer=_number_text(_get(obj, "Answer", (int, float), path, lineno), path, lineno),
            solution=equation,
            # The test file spells one type "Common-Divison"; normalise so per-type reports group it.
            tags={"type": str(obj.get("Type", "")).replace("Divison", "Division"), "source_id": str(obj.get("ID", ""))},
        ))
    return records


def multiarith_split(path: Path, task: str, split: str) -> list[Record]:
    records = []
    for i, (lineno, obj) in enumerate(read_json_array(path)):
        equations, solutions = _get(obj, "lEquations", list, path, lineno), _get(obj, "lSolutions", list, path, lineno)
        if len(equations) != 1 or len(solutions) != 1:
            raise _malformed(path, lineno, "expected one equation and one solution")
        records.append(Record(
            id=f"{task}-{split}-{i}",
            question=_clean(_get(obj, "sQuestion", str, path, lineno)),
            answer=_number_text(solutions[0], path, lineno),
            solution=str(equations[0]),
            tags={"source_id": str(obj.get("iIndex", ""))},
        ))
    return records


def csqa_split(path: Path, task: str, split: str) -> list[Record]:
    records = []
    for i, (lineno, obj) in enumerate(read_jsonl(path)):
        question = _get(obj, "question", dict, path, lineno)
        choices = _get(question, "choices", list, path, lineno)
        try:
            by_label = {str(c["label"]).lower(): _clean(str(c["text"])) for c in choices}
        except (KeyError, TypeError):
            raise _malformed(path, lineno, "choices must be objects with 'label' and 'text'") from None
        if sorted(by_label) != list("abcde"):
            raise _malformed(path, lineno, f"expected choices labelled A-E, got {sorted(by_label)}")
        key = str(_get(obj, "answerKey", str, path, lineno)).lower()
        if key not in by_label:
            raise _malformed(path, lineno, f"answerKey {key!r} is not a choice label")
        records.append(Record(
            id=f"{task}-{split}-{i}",
            question=_clean(_get(question, "stem", str, path, lineno)),
            answer=key,
            choices=tuple(by_label[letter] for letter in "abcde"),
            tags={"concept": str(question.get("question_concept", "")), "source_id": str(obj.get("id", ""))},
        ))
    return records


def strategyqa_split(path: Path, task: str, split: str) -> list[Record]:
    records = []
    for i, (lineno, obj) in enumerate(read_jsonl(path)):
        facts = _get(obj, "facts", list, path, lineno)
        records.append(Record(
            id=f"{task}-{split}-{i}",
            question=_clean(_get(obj, "question", str, path, lineno)),
            answer="yes" if _get(obj, "answer", bool, path, lineno) else "no",
            solution="\n".join(_clean(str(f)) for f in facts),
            tags={"term": str(obj.get("term", "")), "hops": str(len(obj.get("decomposition") or [])),
                  "source_id": str(obj.get("qid", ""))},
        ))
    return records


class AsdivOptions(BaseModel):
    """ASDiv has no official split: the task file names the folds that make each split (asdiv.yaml)."""

    model_config = ConfigDict(extra="forbid")

    folds: str  # a folder of fold<k>.txt files, one problem ID a line (nfolds/asdiv-w covers all problems)
    arithmetic_folds: str | None = None  # the same for the arithmetic subset (nfolds/asdiv-a): the asdiv_a tag
    train_folds: list[int]
    test_folds: list[int]


# "9 (apples)", "2.5", "3/4 (of a cake)", "-(1/3)": one number, optionally with a unit in parentheses.
_ASDIV_NUMBER = re.compile(r"(?P<sign>-?)\(?(?P<num>\d+(?:\.\d+)?(?:/\d+)?)\)?\s*(?:\([^()]*\))?")


def read_asdiv(ctx: ReadContext) -> dict[str, list[Record]]:
    opts = ctx.options_as(AsdivOptions)
    path = ctx.source("source")
    text = path.read_text(encoding="utf-8")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise _malformed(path, exc.position[0], f"not valid XML ({exc})") from None
    problems = {p.get("ID"): p for p in root.iter("Problem")}
    every_fold = sorted({*opts.train_folds, *opts.test_folds})
    arithmetic: set[str] = set()
    if opts.arithmetic_folds:
        arithmetic = set().union(*(_fold_ids(ctx.resolve(opts.arithmetic_folds) / f"fold{k}.txt") for k in every_fold))
    splits: dict[str, list[Record]] = {"train": [], "test": []}
    skipped = 0
    for split, folds in (("train", opts.train_folds), ("test", opts.test_folds)):
        for k in folds:
            fold_path = ctx.resolve(opts.folds) / f"fold{k}.txt"
            for pid in _fold_ids(fold_path):
                if pid not in problems:
                    raise ValueError(f"{fold_path}: problem {pid} is not in {path}")
                record = _asdiv_record(problems[pid], f"{ctx.task}-{split}-{len(splits[split])}", path, text,
                                       pid in arithmetic)
                if record is None:
                    skipped += 1
                else:
                    splits[split].append(record)
    if skipped:
        log.warning("%s: skipped %d problems whose answer is not a single number (names, times, ratios, "
                    "several numbers); see docs/data.md", ctx.task, skipped)
    return splits


def _fold_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _asdiv_record(problem: ET.Element, rid: str, path: Path, text: str, arithmetic: bool) -> Record | None:
    pid = problem.get("ID", "")
    fields = {}
    for name in ("Body", "Question", "Answer", "Formula", "Solution-Type"):
        value = problem.findtext(name)
        if value is None:
            # ElementTree keeps no line numbers; find the problem's line in the text for the message.
            line = text.count("\n", 0, max(text.find(f'ID="{pid}"'), 0)) + 1
            raise _malformed(path, line, f"problem {pid} has no <{name}>")
        fields[name] = value.strip()
    match = _ASDIV_NUMBER.fullmatch(fields["Answer"])
    if not match:
        return None
    return Record(
        id=rid,
        question=_clean(f"{fields['Body']} {fields['Question']}"),
        answer=format_number(Fraction(match.group("sign") + match.group("num"))),
        solution=fields["Formula"],
        tags={"type": fields["Solution-Type"], "grade": problem.get("Grade", ""), "source_id": pid,
              "asdiv_a": "yes" if arithmetic else "no"},
    )


# ---------------------------------------------------------------------------------- gold rationales

_CALCULATOR = re.compile(r"<<[^>]*>>")
_UNIT_GROUP = re.compile(r"\([^()]*[A-Za-z][^()]*\)")  # ASDiv "(cent/dime)", "(Mrs. Hilt)"
_REMAINDER = re.compile(r"^\s*(\d+)\s*r\s*(\d+)\s*$")


# The `reference` teacher's rationale from each dataset's own worked solution (Reader.rationale): a compact
# one-line rationale in the student's style that ends on the gold answer.


def csqa_rationale(record: Record) -> str:
    letter = record.answer
    return f'The question asks for the best fit: "{record.choices["abcde".index(letter)]}". ' \
           f"So the answer is ({letter})."


def gsm8k_rationale(record: Record) -> str | None:
    if record.solution is None:
        return None
    steps = record.solution.rsplit("####", 1)[0]
    return _finish([" ".join(_CALCULATOR.sub("", steps).split())], record.answer)


def svamp_rationale(record: Record) -> str | None:
    return None if record.solution is None else _expression_rationale(record.solution, record.answer)


def multiarith_rationale(record: Record) -> str | None:
    if record.solution is None:
        return None
    return _expression_rationale(record.solution.split("=", 1)[-1], record.answer)


def strategyqa_rationale(record: Record) -> str | None:
    if record.solution is None:
        return None
    facts = [f if f.endswith((".", "?", "!")) else f + "." for f in record.solution.splitlines() if f]
    return " ".join(facts + [f"So the answer is {record.answer}."])


def asdiv_rationale(record: Record) -> str | None:
    return None if record.solution is None else _asdiv_rationale(record.solution, record.answer)


def _asdiv_rationale(formula: str, gold: str) -> str:
    """ASDiv formulas are semi-formal ("17/10=1 r7; 7/5=1 r2", "99+99=198 cents"): compute each segment
    whose left side is arithmetic and keep the others as text."""
    sentences: list[str] = []
    for segment in _UNIT_GROUP.sub(" ", formula).split(";"):
        left, _, right = segment.partition("=")
        if not left.strip():
            continue
        try:
            tree = parse_expression(left)
        except ValueError:
            sentences.append(" ".join(segment.split()).rstrip(".") + ".")
            continue
        if _REMAINDER.match(right) and isinstance(tree, Op) and tree.op == "/":
            dividend, divisor = evaluate(tree.left), evaluate(tree.right)
            quotient, rest = divmod(dividend, divisor)
            division = (f"{format_number(dividend)} / {format_number(divisor)} = "
                        f"{format_number(quotient)} remainder {format_number(rest)}.")
            sentences += [*equation_steps(tree.left)[0], division]
            continue
        steps, value = equation_steps(tree)
        sentences += steps or [f"{format_number(value)}."]
    return _finish(sentences, gold)
