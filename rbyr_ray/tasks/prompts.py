"""Every prompt of the method in one place (METHOD.md "Student sequence format" and "Teacher").

Student:  prefix = [demonstrations] + "Question: {q}\\n[Answer Choices: (a) ... ]\\nReasoning: "
          target = "{rationale}\\nAnswer: {gold}"   (the tokenizer's eos is appended by the caller)
          (a task file may change the prefix template and the stop: taskfile.TaskPrompts)
Teacher:  chat messages; the last user message always carries "Question: {q}" so that a local teacher
          server can find the question, and the teacher is asked to end with "Answer: X".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .records import Record

ANSWER_PREFIX = "Answer: "
STOP = "\n\n"  # the student stops at a blank line
# The student's prefix: `question_block` is "Question: ...\n" and, for multiple choice, "Answer Choices: ...\n".
STUDENT_PREFIX = "{question_block}Reasoning: "
STUDENT_FIELDS = ("question_block", "question", "choices")


def fold_rationale(text: str) -> str:
    """A rationale on one line: newlines folded to spaces, runs of spaces collapsed, no trailing answer line."""
    return re.sub(r"\s+", " ", text).strip()


def format_choices(choices: tuple[str, ...] | list[str]) -> str:
    return " ".join(f"({letter}) {text}" for letter, text in zip("abcde", choices))


def question_block(record: Record) -> str:
    text = f"Question: {record.question.strip()}\n"
    if record.choices:
        text += f"Answer Choices: {format_choices(record.choices)}\n"
    return text


def student_target(rationale: str, answer: str) -> str:
    return f"{fold_rationale(rationale)}\n{ANSWER_PREFIX}{answer}"


def student_prefix(record: Record, demos: list[tuple[Record, str]] | None = None,
                   template: str = STUDENT_PREFIX, stop: str = STOP) -> str:
    """The exam/eval/training prefix; `demos` are (record, rationale) few-shot demonstrations, each ended by
    the stop. A task's own template and stop come from its TaskPrompts."""

    def prefix(r: Record) -> str:
        return template.format(question_block=question_block(r), question=r.question.strip(),
                               choices=format_choices(r.choices))

    shots = "".join(prefix(r) + student_target(rat, r.answer) + stop for r, rat in demos or [])
    return shots + prefix(record)


def strip_answer_line(rationale: str) -> str:
    """The reasoning part of a model answer: everything before the first "Answer:" line."""
    return re.split(r"\n?\s*Answer\s*:", rationale, maxsplit=1, flags=re.IGNORECASE)[0].strip()


# ------------------------------------------------------------------------------------------------ teacher

TEACHER_SYSTEM = (
    "You are an expert tutor writing worked solutions for a small student model. Reason step by step in a few "
    "short sentences, compute every intermediate result explicitly, and finish with a final line of the form "
    "'Answer: X' where X is {answer_form}."
)
ANSWER_FORMS = {
    "numeric": "a single number",
    "yesno": "yes or no",
    "choice": "the letter of the correct choice, (a) to (e)",
}

DEMOS_DIR = Path(__file__).resolve().parent / "builtin" / "demos"


def read_demo_items(path: Path) -> list:
    """The items of a demonstrations file: a YAML list, or JSON Lines (.jsonl/.ndjson)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return yaml.safe_load(text) or []


# Hand-written demonstrations (builtin/demos/*.yaml), keyed by file name: each answer type's (the default of a
# task file of that type) and arith's own. Short, in the student's compact style, so that accepted teacher
# rationales look like what the student should write. The built-in task files name theirs.
FEW_SHOT: dict[str, list[tuple[str, tuple[str, ...], str, str]]] = {
    path.stem: [(d["question"], tuple(d.get("choices") or ()), d["rationale"], d["answer"])
                for d in read_demo_items(path)]
    for path in sorted(DEMOS_DIR.glob("*.yaml"))
}


def _answer_text(record: Record) -> str:
    """The gold answer as a hint: a choice letter alone means little, so its text comes with it."""
    letter = record.answer.strip().lower()
    if record.choices and letter in "abcde"[: len(record.choices)]:
        return f"({letter}) {record.choices['abcde'.index(letter)]}"
    return record.answer


def _answer_type(record: Record, answer_type: str | None) -> str:
    return answer_type or ("choice" if record.choices else "numeric")


def teacher_cot_messages(record: Record, answer_type: str | None = None, few_shot: bool = True) -> list[dict]:
    """Round 1: a few-shot chain-of-thought prompt for the whole training set, with the answer type's
    demonstrations (a task's own: taskfile.TaskPrompts)."""
    kind = _answer_type(record, answer_type)
    messages = [{"role": "system", "content": TEACHER_SYSTEM.format(answer_form=ANSWER_FORMS[kind])}]
    if few_shot:
        for question, choices, rationale, answer in FEW_SHOT[kind]:
            demo = Record(id="demo", question=question, answer=answer, choices=choices)
            messages.append({"role": "user", "content": question_block(demo).strip()})
            messages.append({"role": "assistant", "content": student_target(rationale, answer)})
    messages.append({"role": "user", "content": question_block(record).strip()})
    return messages


def teacher_feedback_messages(record: Record, wrong_rationale: str, answer_type: str | None = None,
                              use_hint: bool = True) -> list[dict]:
    """Rounds >= 2: show the student's wrong rationale and (with the hint) the correct answer, and ask for a
    solution written for the question alone: the student is trained on it and never sees the attempt or the hint
    (what still refers to them is cleaned or rejected: `remove_feedback_talk`)."""
    kind = _answer_type(record, answer_type)
    hint = f"Hint: the correct answer is {_answer_text(record)}.\n" if use_hint else ""
    content = (
        question_block(record)
        + f"Student's solution: {fold_rationale(wrong_rationale)}\n"
        + "The student's solution is wrong. " + hint
        + "Write a correct step-by-step solution to the question, avoiding the student's error. Write it for the "
        + "question alone, as a textbook would: do not mention the student, the student's solution, its error"
        + (" or the hint" if use_hint else "") + ". End with the line 'Answer: X'."
    )
    return [
        {"role": "system", "content": TEACHER_SYSTEM.format(answer_form=ANSWER_FORMS[kind])},
        {"role": "user", "content": content},
    ]


# A rationale that talks about the feedback prompt rather than the question (issue 23): the student is trained
# on it and never sees a student, a hint or a previous attempt. A pattern that the question itself matches ("A
# student reads 12 pages") is not a reference.
FEEDBACK_TALK = [re.compile(p, re.IGNORECASE) for p in (
    r"\bstudents?(?:'s|')?(?!\w)",
    r"\bhint(?:s|ed)?\b",
    (r"\b(?:previous|initial|original|earlier|prior|given|provided|above|first|incorrect|wrong|flawed|your)\s+"
     r"(?:solution|attempt|answer|approach|reasoning|work|calculation|response)s?\b"),
    r"\bcorrect answer (?:should|must|would) be\b",
    r"\bavoid(?:s|ing|ed)?\b[^.\n]*\b(?:error|mistake)s?\b",
    r"\b(?:the|this|that|their|his|her|same)\s+(?:error|mistake)s?\b",
    r"\b(?:mistakenly|incorrectly|erroneously|corrected)\b",
)]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def remove_feedback_talk(reasoning: str, question: str = "") -> tuple[str, list[str]]:
    """(the reasoning without the sentences that refer to the feedback prompt, the references left in it).

    A sentence that refers to the student, the hint or the previous attempt is removed when it carries no step
    (no "="): "Given the hint, the correct answer should be 11." A reference inside a step ("Unlike the student,
    47 + 32 = 79.") cannot be removed without the step: it is returned, and the caller rejects the rationale
    (`refers_to_feedback`). Lines are kept (the step checker reads them).

    >>> remove_feedback_talk("The student's solution is wrong.\\n47 + 32 = 79. So 79 in all.")
    ('47 + 32 = 79. So 79 in all.', [])
    >>> remove_feedback_talk("Unlike the student, 47 + 32 = 79.")[1]
    ['Unlike the student, 47 + 32 = 79.']
    """
    talk = [p for p in FEEDBACK_TALK if not p.search(question)]
    kept_lines, left = [], []
    for line in reasoning.split("\n"):
        kept = []
        for sentence in _SENTENCE_END.split(line):
            if not any(p.search(sentence) for p in talk):
                kept.append(sentence)
            elif "=" in sentence:
                kept.append(sentence)
                left.append(sentence.strip())
        if kept or not line.strip():
            kept_lines.append(" ".join(kept))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept_lines)).strip(), left


def question_from_messages(messages: list[dict]) -> tuple[str, tuple[str, ...]] | None:
    """The question (and choices) of the last user message; what a local teacher server answers."""
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        return None
    text = str(users[-1].get("content", ""))
    match = re.search(r"Question:\s*(.+?)\s*(?:\nAnswer Choices:\s*(.+?))?\s*(?:\n|$)", text, flags=re.DOTALL)
    if not match:
        return None
    question = match.group(1).split("\n")[0].strip()
    choices: tuple[str, ...] = ()
    if match.group(2):
        choices = tuple(c.strip() for c in re.split(r"\([a-e]\)", match.group(2).split("\n")[0]) if c.strip())
    return question, choices
