"""What the local teacher server writes: exact rationales (`solver`), worked solutions (`reference`), and the
deliberately bad answers of fault injection (a wrong answer told fluently, unparseable text, or the right
answer reached by a false step).

    solver = SolverBackend()
    solver.answer(messages, variant=1)   # "First, 12 + 7 = 19. Then 19 - 3 = 16.\\nAnswer: 16"

Every answer is in the student's compact style: one short equation per step, then "Answer: N". The solver
inverts the arith templates with `arith.parse_question`; nothing is ever evaluated as code.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Protocol

from ..tasks import arith
from ..tasks.prompts import question_from_messages

UNKNOWN = "I cannot work out this question from the information given."


class Backend(Protocol):
    def answer(self, messages: list[dict], variant: int) -> str: ...

    def wrong(self, messages: list[dict], rng: random.Random) -> str: ...

    # The right final answer after one false intermediate step; None when the backend cannot write one.
    def false_step(self, messages: list[dict], rng: random.Random) -> str | None: ...


# Wording variants of a step chain: (opener, connector before each later step). Every variant keeps one
# equation per step and the final "Answer:" line, so each still grades correct and stays compact; openers
# all differ, so that even one-step rationales differ across samples.
_VARIANTS: list[tuple[str, str]] = [
    ("", ""),
    ("First, ", "Then "),
    ("We compute ", "Next, "),
    ("Step 1: ", "Step {i}: "),
    ("Start: ", "So "),
    ("Compute: ", "After that, "),
]


def phrase_steps(equations: list[str], variant: int) -> str:
    """Join "a op b = c" equations in the wording of `variant` (any int; wraps around).

    >>> phrase_steps(["12 + 7 = 19", "19 - 3 = 16"], 0)
    '12 + 7 = 19. 19 - 3 = 16.'
    >>> phrase_steps(["12 + 7 = 19", "19 - 3 = 16"], 1)
    'First, 12 + 7 = 19. Then 19 - 3 = 16.'
    """
    opener, connector = _VARIANTS[variant % len(_VARIANTS)]
    parts = []
    for i, eq in enumerate(equations, 1):
        lead = opener if i == 1 else connector.format(i=i)
        parts.append(f"{lead}{eq}.")
    return " ".join(parts)


def _fmt(value: int) -> str:
    return str(value)


@dataclass
class SolverBackend:
    """Exact step-by-step answers to `arith` questions (templates may be overridden by the task config)."""

    templates: dict[str, list[str]] | None = None

    def _parse(self, messages: list[dict]):
        found = question_from_messages(messages)
        if found is None:
            return None
        return arith.parse_question(found[0], self.templates)

    def _solved(self, messages: list[dict]):
        """(start, chain of (value, step, result)) of one of our questions; None for any other question."""
        parsed = self._parse(messages)
        if parsed is None:
            return None
        start, steps = parsed
        try:
            return start, arith.solve(start, steps)
        except ValueError:  # an inexact division: not one of ours
            return None

    def answer(self, messages: list[dict], variant: int) -> str:
        solved = self._solved(messages)
        if solved is None:
            return UNKNOWN
        start, chain = solved
        if not chain:
            return f"{start} to begin with, and nothing changes.\nAnswer: {start}"
        equations = [f"{a} {s.op} {s.operand} = {b}" for a, s, b in chain]
        return f"{phrase_steps(equations, variant)}\nAnswer: {_fmt(chain[-1][2])}"

    def wrong(self, messages: list[dict], rng: random.Random) -> str:
        """A fluent rationale with one arithmetic slip, carried through to a wrong final answer."""
        parsed = self._parse(messages)
        if parsed is None:
            return f"Counting carefully, there are {rng.randint(2, 99)} in all.\nAnswer: {rng.randint(2, 99)}"
        start, steps = parsed
        try:
            chain = arith.solve(start, steps)
        except ValueError:
            return UNKNOWN
        gold = chain[-1][2] if chain else start
        if not chain:
            wrong = gold + rng.choice([-2, -1, 1, 2])
            return f"{start} to begin with, plus the ones found later.\nAnswer: {wrong}"
        equations, value, slipped = [], start, False
        slip_at = rng.randrange(len(chain))
        for i, (_, step, _) in enumerate(chain):
            try:
                result = arith.apply_step(value, step)
            except ValueError:  # the slip made a later division inexact: slip at the last step instead
                return self._slip_last(start, chain, rng)
            if i == slip_at:
                result += rng.choice([-3, -2, -1, 1, 2, 3, 10, -10])
                slipped = True
            equations.append(f"{value} {step.op} {step.operand} = {result}")
            value = result
        if not slipped or value == gold:
            return self._slip_last(start, chain, rng)
        return f"{phrase_steps(equations, rng.randrange(len(_VARIANTS)))}\nAnswer: {value}"

    def false_step(self, messages: list[dict], rng: random.Random) -> str | None:
        """A fluent rationale whose final answer is right but one of whose steps is false: a weak teacher that
        writes the hinted answer after a wrong derivation. The slip is in an intermediate step when there are
        several (later steps go on from the true value), else in the only one."""
        solved = self._solved(messages)
        if solved is None:
            return None
        start, chain = solved
        if not chain:
            return f"{start} + 0 = {start + rng.choice([1, 2])}.\nAnswer: {start}"
        slip_at = rng.randrange(len(chain) - 1) if len(chain) > 1 else 0
        equations = [f"{a} {s.op} {s.operand} = {b}" for a, s, b in chain]
        a, s, b = chain[slip_at]
        equations[slip_at] = f"{a} {s.op} {s.operand} = {b + rng.choice([-3, -2, -1, 1, 2, 3, 10])}"
        return f"{phrase_steps(equations, rng.randrange(len(_VARIANTS)))}\nAnswer: {_fmt(chain[-1][2])}"

    def _slip_last(self, start: int, chain: list, rng: random.Random) -> str:
        equations = [f"{a} {s.op} {s.operand} = {b}" for a, s, b in chain]
        a, s, b = chain[-1]
        wrong = b + rng.choice([-2, -1, 1, 2])
        equations[-1] = f"{a} {s.op} {s.operand} = {wrong}"
        return f"{phrase_steps(equations, rng.randrange(len(_VARIANTS)))}\nAnswer: {wrong}"


# Openers for the reference backend's variety across samples (its source text is a single solution).
_REFERENCE_OPENERS = ["", "Let's see. ", "Step by step: ", "Working it out: "]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass
class ReferenceBackend:
    """Answers from the dataset's own worked solutions (`TaskData.reference`), looked up by question text."""

    task: str
    answers: dict[tuple[str, tuple[str, ...]], tuple[str, str]]  # (question, choices) -> (rationale, answer)

    @classmethod
    def from_task(cls, data) -> ReferenceBackend:
        """Every record of a loaded task (TaskData) that has a worked solution."""
        answers = {}
        for record in [*data.train, *data.test, *data.val]:
            rationale = data.reference(record)
            if rationale:
                key = (_norm(record.question), tuple(_norm(c) for c in record.choices))
                answers[key] = (rationale.strip(), record.answer)
        return cls(data.name, answers)

    def _lookup(self, messages: list[dict]) -> tuple[str, str] | None:
        found = question_from_messages(messages)
        if found is None:
            return None
        question, choices = found
        key = (_norm(question), tuple(_norm(c) for c in choices))
        hit = self.answers.get(key)
        if hit is None and not choices:  # a prompt that lost its choices: match on the question alone
            hit = next((v for k, v in self.answers.items() if k[0] == key[0]), None)
        return hit

    def answer(self, messages: list[dict], variant: int) -> str:
        hit = self._lookup(messages)
        if hit is None:
            return UNKNOWN
        rationale, answer = hit
        opener = _REFERENCE_OPENERS[variant % len(_REFERENCE_OPENERS)]
        return f"{opener}{rationale}\nAnswer: {answer}"

    def wrong(self, messages: list[dict], rng: random.Random) -> str:
        hit = self._lookup(messages)
        if hit is None:
            return UNKNOWN
        rationale, answer = hit
        return f"{rationale}\nAnswer: {wrong_answer(answer, rng)}"

    def false_step(self, messages: list[dict], rng: random.Random) -> str | None:
        """The worked solution with one stated result changed ("48/2 = 25"), and the right answer; None when
        it states no result to change (CSQA, StrategyQA)."""
        hit = self._lookup(messages)
        if hit is None:
            return None
        rationale, answer = hit
        results = list(re.finditer(r"=\s*\$?(\d+)\b", rationale))
        if not results:
            return None
        m = rng.choice(results)
        slipped = str(int(m.group(1)) + rng.choice([1, 2, 3, 10]))
        return f"{rationale[:m.start(1)]}{slipped}{rationale[m.end(1):]}\nAnswer: {answer}"


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible but wrong answer of the same kind (number, yes/no, choice letter).

    >>> wrong_answer("yes", random.Random(0))
    'no'
    """
    low = answer.strip().lower()
    if low in ("yes", "no"):
        return "no" if low == "yes" else "yes"
    if len(low) == 1 and low in "abcde":
        return rng.choice([c for c in "abcde" if c != low])
    try:
        value = float(low.replace(",", ""))
    except ValueError:
        return "0" if low != "0" else "1"
    wrong = value + rng.choice([-2, -1, 1, 2])
    return str(int(wrong)) if wrong == int(wrong) else str(wrong)


# Unparseable text: no digits, no "Answer:" cue, no yes/no, no (a)-(e), so every grader finds nothing.
_GARBAGE_WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
                  "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "###",
                  "<unk>", "\u2591\u2591", "}}{{", "null"]


def garbage(rng: random.Random) -> str:
    """Fluent-looking noise with nothing to grade."""
    return " ".join(rng.choice(_GARBAGE_WORDS) for _ in range(rng.randint(6, 16)))


_HINT = re.compile(r"Hint: the correct answer is (.+?)\.?\s*$", re.MULTILINE)


class StudentBackend:
    """STaR-style rationalization: the student itself answers, sampling in its own prompt format.

    With the feedback prompt's hint, the hint goes into the student's question ("... (The answer is 16.)"),
    so it rationalizes the gold answer; without one it simply answers. Requests are batched across HTTP
    requests by the server (`batched = True`), since one generate call per sample would be far too slow.
    """

    batched = True

    def __init__(self, model_path: str, *, temperature: float = 0.7, max_new_tokens: int = 96,
                 threads: int | None = None, task=None):
        from ..student.engines import SamplingSpec
        from ..student.hf_engine import HFEngine
        from ..tasks.taskfile import task_prompts

        self.engine = HFEngine(model_path, threads=threads)
        # The task's student prefix and stop (taskfile.TaskPrompts), as the exam asks the student.
        self.task = task_prompts(task, "numeric")
        self.spec = SamplingSpec(greedy=False, temperature=temperature, top_k=50, max_new_tokens=max_new_tokens,
                                 stop=self.task.stop)

    def prompt(self, messages: list[dict]) -> str:
        from ..tasks import Record

        found = question_from_messages(messages)
        if found is None:
            return ""
        question, choices = found
        hint = _HINT.search(str(messages[-1].get("content", "")))
        if hint:
            question = f"{question} (The answer is {hint.group(1).strip()}.)"
        return self.task.student_prefix(Record(id="q", question=question, answer="", choices=choices))

    def answer_batch(self, requests: list[tuple[list[dict], int]]) -> list[str]:
        """One text per (messages, variant); a single batched generate call for all of them."""
        prompts = [self.prompt(m) for m, _ in requests]
        ids = [self.engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        live = [i for i, p in enumerate(prompts) if p]
        gens = self.engine.generate([ids[i] for i in live], self.spec, seeds=[requests[i][1] for i in live])
        texts = [UNKNOWN] * len(requests)
        for i, gen in zip(live, gens):
            texts[i] = gen.text
        return texts

    def answer(self, messages: list[dict], variant: int) -> str:
        return self.answer_batch([(messages, variant)])[0]

    def wrong(self, messages: list[dict], rng: random.Random) -> str:
        return f"{self.answer(messages, rng.randrange(1 << 16))}\nAnswer: {rng.randint(0, 99)}"

    def false_step(self, messages: list[dict], rng: random.Random) -> str | None:
        return None  # the student's own text: nothing to inject
