"""Prompts: student prefix/target, teacher CoT and feedback messages, and the gold-rationale grading round trip."""

from __future__ import annotations

import functools

import pytest

from rbyr_ray.config import TaskConfig
from rbyr_ray.tasks import TASKS, Record, TaskData, gold_rationale, load_task
from rbyr_ray.tasks.grading import grade
from rbyr_ray.tasks.prompts import (
    fold_rationale,
    question_from_messages,
    strip_answer_line,
    student_prefix,
    student_target,
    teacher_cot_messages,
    teacher_feedback_messages,
)


@functools.cache
def task_data(task: str) -> TaskData:
    return load_task(TaskConfig(name=task))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_gold_rationale_targets_grade_correct(task):
    data = task_data(task)
    records = data.train + data.test
    answer_type = TASKS[task].answer_type
    rationales = [gold_rationale(task, r) for r in records]
    verdicts = [grade(answer_type, student_target(rationale, r.answer), r.answer, r.choices)
                for rationale, r in zip(rationales, records)]
    assert all(verdicts[:50])
    assert sum(verdicts) >= 0.95 * len(records)
    # Without its answer line the rationale alone must already lead to the gold answer.
    alone = [grade(answer_type, rationale, r.answer, r.choices) for rationale, r in zip(rationales, records)]
    assert sum(alone) >= 0.95 * len(records)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_targets_are_one_line_plus_answer(task):
    for r in task_data(task).train[:50]:
        target = student_target(gold_rationale(task, r), r.answer)
        rationale, answer_line = target.split("\n")
        assert rationale and answer_line == f"Answer: {r.answer}"
        assert "<<" not in rationale and "####" not in rationale


def test_student_prefix_format():
    record = Record(id="q", question="Tom has 3 apples and buys 2. How many?", answer="5")
    assert student_prefix(record) == "Question: Tom has 3 apples and buys 2. How many?\nReasoning: "
    choice = Record(id="c", question="Where is milk kept?", answer="b", choices=("oven", "fridge", "car", "bag", "sea"))
    assert student_prefix(choice) == ("Question: Where is milk kept?\nAnswer Choices: (a) oven (b) fridge (c) car "
                                      "(d) bag (e) sea\nReasoning: ")
    demo = Record(id="d", question="1 + 1?", answer="2")
    with_demo = student_prefix(record, [(demo, "1 + 1 = 2.")])
    assert with_demo == ("Question: 1 + 1?\nReasoning: 1 + 1 = 2.\nAnswer: 2\n\n"
                         "Question: Tom has 3 apples and buys 2. How many?\nReasoning: ")


def test_student_target_folds_newlines():
    assert student_target("3 * 4 = 12.\n12 + 7 =   19.\n", "19") == "3 * 4 = 12. 12 + 7 = 19.\nAnswer: 19"
    assert fold_rationale("a\n\nb\tc ") == "a b c"


def test_strip_answer_line():
    assert strip_answer_line("2 + 2 = 4.\nAnswer: 4") == "2 + 2 = 4."
    assert strip_answer_line("2 + 2 = 4. answer: 4\nmore") == "2 + 2 = 4."
    assert strip_answer_line("no answer line") == "no answer line"


@pytest.mark.parametrize(("task", "form"), [("gsm8k", "a single number"), ("strategyqa", "yes or no"),
                                            ("csqa", "the letter of the correct choice")])
def test_teacher_cot_messages(task, form):
    record = task_data(task).train[0]
    messages = teacher_cot_messages(record, TASKS[task].answer_type)
    assert messages[0]["role"] == "system" and form in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": messages[-1]["content"]}
    assert f"Question: {record.question}" in messages[-1]["content"]
    assert len(messages) == 1 + 2 * 2 + 1  # system, two demonstrations, the question
    assert len(teacher_cot_messages(record, TASKS[task].answer_type, few_shot=False)) == 2


def test_teacher_demonstrations_per_task_grade_correct():
    from rbyr_ray.tasks.prompts import FEW_SHOT
    from rbyr_ray.tasks.taskfile import task_prompts

    arith = task_data("arith").train[0]
    messages = task_prompts("arith", "numeric").cot_messages(arith)  # arith.yaml's own demonstrations
    assert messages[2]["content"] == "12 + 7 = 19. 19 - 3 = 16.\nAnswer: 16"
    assert task_prompts("gsm8k", "numeric").cot_messages(arith)[2]["content"].startswith("The baker sells")
    assert teacher_cot_messages(arith, "numeric")[2]["content"].startswith("The baker sells")
    for key, demos in FEW_SHOT.items():
        kind = key if key in ("numeric", "yesno", "choice") else TASKS[key].answer_type
        for _question, choices, rationale, answer in demos:
            assert grade(kind, student_target(rationale, answer), answer, choices), (key, rationale)


def test_teacher_feedback_messages_hint_only_when_asked():
    record = task_data("csqa").train[0]
    wrong = "Sanctions make people yell.\nSo (d)."
    with_hint = teacher_feedback_messages(record, wrong, "choice", use_hint=True)[-1]["content"]
    without = teacher_feedback_messages(record, wrong, "choice", use_hint=False)[-1]["content"]
    for content in (with_hint, without):
        assert f"Question: {record.question}" in content
        assert "Sanctions make people yell. So (d)." in content
    assert "Hint: the correct answer is (a) ignore." in with_hint
    assert "Hint" not in without and "correct answer is" not in without
    numeric = task_data("svamp").train[0]
    assert "Hint: the correct answer is 51." in teacher_feedback_messages(numeric, "76 + 25 = 101.")[-1]["content"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_question_from_messages_round_trip(task):
    answer_type = TASKS[task].answer_type
    for r in task_data(task).test[:30]:
        expected = (r.question, r.choices)
        assert question_from_messages(teacher_cot_messages(r, answer_type)) == expected
        assert question_from_messages(teacher_feedback_messages(r, "wrong.\nsteps", answer_type)) == expected


def test_question_from_messages_without_question():
    assert question_from_messages([{"role": "system", "content": "hi"}]) is None
    assert question_from_messages([{"role": "user", "content": "no question here"}]) is None
