"""The synthetic task `arith`: seeded multi-step arithmetic word problems with exact integer results.

A problem is a start sentence, 1-4 operation sentences and a question, all from templates:

    Mia has 12 marbles. She buys 7 more marbles. She gives away 3 marbles. How many marbles does Mia have now?

Its canonical rationale is compact, one equation per step: "12 + 7 = 19. 19 - 3 = 16."
`parse_question` inverts the templates (used by the local `solver` teacher); nothing is evaluated as code.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..config import ArithConfig
from .records import Record, TaskData

START_TEMPLATES = [
    "{name} has {n} {obj}.",
    "{name} starts with {n} {obj}.",
    "{name} owns {n} {obj}.",
]
OP_TEMPLATES: dict[str, list[str]] = {
    "+": ["{Pron} buys {n} more {obj}.", "{Pron} finds {n} more {obj}.", "A friend gives {pron_obj} {n} more {obj}."],
    "-": ["{Pron} gives away {n} {obj}.", "{Pron} loses {n} {obj}.", "{Pron} sells {n} {obj}."],
    # Says what the gold computes (the count becomes n times itself): "Then she gets 2 times as many coins as
    # she had" read to LLM teachers as "she receives 2x more" (issue 23: 12 of a real teacher's 22 wrong answers).
    "*": ["Then {pron} ends up with {n} times as many {obj} as {pron} had.",
          "The number of {obj} becomes {n} times as large."],
    "/": ["{Pron} splits the {obj} into {n} equal groups and keeps one group.",
          "{Pron} keeps only one of every {n} {obj}."],
}
QUESTION_TEMPLATE = "How many {obj} does {name} have now?"
NAMES = [("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"), ("Omar", "he"),
         ("Ines", "she"), ("Ravi", "he"), ("Lena", "she"), ("Theo", "he"), ("Sara", "she"), ("Ken", "he")]
OBJECTS = ["apples", "marbles", "stickers", "coins", "books", "pencils", "shells", "cards", "stamps", "beads"]
MAX_VALUE = 999  # keeps intermediate results small enough for a small student
OP_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


@dataclass(frozen=True)
class Step:
    op: str  # one of + - * /
    operand: int


def apply_step(value: int, step: Step) -> int:
    if step.op == "+":
        return value + step.operand
    if step.op == "-":
        return value - step.operand
    if step.op == "*":
        return value * step.operand
    if step.op == "/":
        if value % step.operand:
            raise ValueError(f"{value} / {step.operand} is not exact")
        return value // step.operand
    raise ValueError(f"unknown operation {step.op!r}")


def solve(start: int, steps: list[Step]) -> list[tuple[int, Step, int]]:
    """[(before, step, after), ...] for every step."""
    out, value = [], start
    for step in steps:
        after = apply_step(value, step)
        out.append((value, step, after))
        value = after
    return out


def canonical_rationale(start: int, steps: list[Step]) -> str:
    if not steps:
        return f"{start}."
    return " ".join(f"{a} {s.op} {s.operand} = {b}." for a, s, b in solve(start, steps))


def _fill(template: str, name: str, pron: str, obj: str, n: int | None = None) -> str:
    return template.format(name=name, Pron=pron.capitalize(), pron=pron, pron_obj="him" if pron == "he" else "her",
                           obj=obj, n=n)


def _pick_step(rng: random.Random, value: int, cfg: ArithConfig) -> Step | None:
    ops = list(cfg.ops)
    rng.shuffle(ops)
    for op in ops:
        if op == "+" and value + cfg.min_number <= MAX_VALUE:
            return Step("+", rng.randint(cfg.min_number, min(cfg.max_number, MAX_VALUE - value)))
        if op == "-" and value > 1:
            return Step("-", rng.randint(1, min(value - 1, cfg.max_number)))
        if op == "*" and value * 2 <= MAX_VALUE:
            return Step("*", rng.randint(2, min(cfg.max_factor, MAX_VALUE // value)))
        if op == "/":
            divisors = [d for d in range(2, cfg.max_factor + 1) if value % d == 0]
            if divisors:
                return Step("/", rng.choice(divisors))
    return None


def make_problem(rng: random.Random, cfg: ArithConfig, templates: dict[str, list[str]] | None = None):
    """One problem: (question, start, steps)."""
    templates = templates or cfg.templates or OP_TEMPLATES
    name, pron = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    start = rng.randint(cfg.min_number, cfg.max_number)
    n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
    steps, value, sentences = [], start, [_fill(rng.choice(START_TEMPLATES), name, pron, obj, start)]
    for _ in range(n_steps):
        step = _pick_step(rng, value, cfg)
        if step is None:
            break
        steps.append(step)
        value = apply_step(value, step)
        sentences.append(_fill(rng.choice(templates[step.op]), name, pron, obj, step.operand))
    sentences.append(_fill(QUESTION_TEMPLATE, name, pron, obj))
    return " ".join(sentences), start, steps


def generate(cfg: ArithConfig, name: str = "arith") -> TaskData:
    """Deterministic by `cfg.seed`; test questions come first and no question text is in both splits.
    `name`: the task's, for the record ids ("arith-train-0")."""
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    records: list[Record] = []
    attempts = 0
    while len(records) < cfg.n_test + cfg.n_train:
        attempts += 1
        if attempts > 50 * (cfg.n_test + cfg.n_train) + 1000:
            raise ValueError(f"arith: cannot make {cfg.n_test + cfg.n_train} distinct problems with these settings")
        question, start, steps = make_problem(rng, cfg)
        if question in seen or len(steps) < cfg.min_steps:
            continue
        seen.add(question)
        value = solve(start, steps)[-1][2] if steps else start
        split = "test" if len(records) < cfg.n_test else "train"
        index = len(records) if split == "test" else len(records) - cfg.n_test
        records.append(Record(
            id=f"{name}-{split}-{index}",
            question=question,
            answer=str(value),
            solution=canonical_rationale(start, steps),
            tags={"steps": str(len(steps)), "ops": ",".join(sorted({OP_NAMES[s.op] for s in steps}))},
        ))
    return TaskData(name, "numeric", train=records[cfg.n_test:], test=records[: cfg.n_test])


# ------------------------------------------------------------------------------------- template inversion


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for key, sub in {
        "name": r"(?P<name>[A-Z][a-z]+)", "Pron": r"(?:He|She)", "pron": r"(?:he|she)",
        "pron_obj": r"(?:him|her)", "obj": r"(?P<obj>[a-z]+)", "n": r"(?P<n>\d+)",
    }.items():
        pattern = pattern.replace(re.escape("{" + key + "}"), sub, 1).replace(re.escape("{" + key + "}"), r"\w+")
    return re.compile(pattern)


def parse_question(question: str, templates: dict[str, list[str]] | None = None) -> tuple[int, list[Step]] | None:
    """Invert the templates: (start, steps) of a generated question, or None when it is not one."""
    templates = templates or OP_TEMPLATES
    sentences = re.findall(r"[^.?]+[.?]", question.strip())
    if len(sentences) < 2:
        return None
    start = None
    for template in START_TEMPLATES:
        match = _template_regex(template).fullmatch(sentences[0].strip())
        if match:
            start = int(match.group("n"))
            break
    if start is None or not _template_regex(QUESTION_TEMPLATE).fullmatch(sentences[-1].strip()):
        return None
    steps: list[Step] = []
    for sentence in sentences[1:-1]:
        for op, options in templates.items():
            match = next((m for t in options if (m := _template_regex(t).fullmatch(sentence.strip()))), None)
            if match:
                steps.append(Step(op, int(match.group("n"))))
                break
        else:
            return None
    return start, steps
