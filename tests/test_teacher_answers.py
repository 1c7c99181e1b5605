"""Teacher answers read whole (issue 23): real-LLM-style answers (paragraphs, LaTeX, markdown, code blocks, units)
with the exact final answer `extract_teacher_answer` must read and, where given, the exact rationale kept for
training; students keep their rule (the first block only). Also: the cleaning of talk about the feedback prompt,
and the gate's reasons `refers_to_feedback` and `truncated`. Pure Python."""

from __future__ import annotations

import pytest

from rbyr_ray.tasks.grading import extract_answer, extract_teacher_answer, plain_text
from rbyr_ray.tasks.prompts import remove_feedback_talk, teacher_feedback_messages
from rbyr_ray.tasks.records import Record
from rbyr_ray.tasks.steps import check_steps
from rbyr_ray.teacher.stage import judge

CHOICES = ("ignore", "enforce", "authoritarian", "yell at", "avoid")

# (answer type, teacher text, the final answer read, the rule that read it, the rationale kept; ... = not checked)
CASES = [
    # --- the issue's cases
    ("numeric", "Initial apples = 37\n\nAfter the market: 37 + 20 = 57\nTotal = 57 + 39 = 96\n\nAnswer: 96", "96",
     "answer_line", "Initial apples = 37 After the market: 37 + 20 = 57 Total = 57 + 39 = 96"),
    ("numeric", "Let x be the number of pens.\n\nFinal Answer: X = 12", "12", "answer_line",
     "Let x be the number of pens."),
    ("numeric", "First, add the two groups.\n\n47 + 5 = 52.\n\nThe correct answer is 52.", "52", "answer_is",
     "First, add the two groups. 47 + 5 = 52."),
    ("numeric", "Three bags of three marbles each.\n\n\\(\\boxed{9}\\)", "9", "boxed",
     "Three bags of three marbles each."),
    ("numeric", "First, 4 + 5 = 9.\n\nFinal answer: Answer: 9", "9", "answer_line", "First, 4 + 5 = 9."),
    # --- Answer: lines, bold, LaTeX, headings
    ("numeric", "Step 1: 57 + 39 = 96.\n\n**Answer: 96**", "96", "answer_line", "Step 1: 57 + 39 = 96."),
    ("numeric", "Step 1: 57 + 39 = 96.\n\n**Answer:** 96", "96", "answer_line", "Step 1: 57 + 39 = 96."),
    ("numeric", "Step 1: 57 + 39 = 96.\n\n**Final Answer:** **96**", "96", "answer_line", "Step 1: 57 + 39 = 96."),
    ("numeric", "We add:\n\\[ 57 + 39 = 96 \\]\n\n\\[ \\text{Answer: } 96 \\]", "96", "answer_line",
     "We add: 57 + 39 = 96"),
    ("numeric", "We add: \\( 57 + 39 = 96 \\).\n\\( \\textbf{Answer: 96} \\)", "96", "answer_line",
     "We add: 57 + 39 = 96 ."),
    ("numeric", "### Solution\n1. 12 * 4 = 48 pages.\n2. 48 + 10 = 58 pages.\n\n### Answer: 58", "58",
     "answer_line", "Solution 1. 12 * 4 = 48 pages. 2. 48 + 10 = 58 pages."),
    ("numeric", "12 * 4 = 48. 48 + 10 = 58.\nAnswer:\n58", "58", "answer_line", "12 * 4 = 48. 48 + 10 = 58."),
    ("numeric", "So she has 96 apples. Answer: 96", "96", "answer_line", "So she has 96 apples."),
    ("numeric", "Answer: 37 (first guess)\n\nWait, I forgot the 59: 37 + 59 = 96.\n\nAnswer: 96", "96",
     "answer_line", "Answer: 37 (first guess) Wait, I forgot the 59: 37 + 59 = 96."),
    ("numeric", "The pens cost 3 * 4 = 12 dollars.\n\nAnswer: 3 * 4 = 12", "12", "answer_line",
     "The pens cost 3 * 4 = 12 dollars."),
    ("numeric", "Answer: 96\n\nExplanation: 57 + 39 = 96, and nothing else is added later (2 friends).", "96",
     "answer_line", ""),
    # --- trailing units, periods, money, fractions, percents, negatives
    ("numeric", "He pays 2 * 600 = 1,200 dollars.\n\nAnswer: $1,200.", "1200", "answer_line", ...),
    ("numeric", "Each costs 1234.5 / 2.\n\nAnswer: $617.25 per item.", "617.25", "answer_line", ...),
    ("numeric", "Speed = distance / time = 30 / 2.\n\nAnswer: 15 km/h.", "15", "answer_line", ...),
    ("numeric", "She uses three quarters of the cup.\n\nAnswer: 3/4 cup", "0.75", "answer_line", ...),
    ("numeric", "The fraction is \\( \\frac{3}{4} \\).\n\nFinal answer: \\(\\frac{3}{4}\\)", "0.75", "answer_line",
     "The fraction is 3/4 ."),
    ("numeric", "It rose from 40 to 60, so 20 / 40 = 0.5.\n\nAnswer: 50%.", "50", "answer_line", ...),
    ("numeric", "The temperature is 5 - 12 = -7 degrees.\n\nAnswer: -7 degrees.", "-7", "answer_line", ...),
    ("numeric", "Half of 45 is 22.5 hours.\n\nAnswer: 22.5 hours.", "22.5", "answer_line", ...),
    ("numeric", "Total: 1,000 + 250 = 1,250 meters.\n\nAnswer: 1,250 m", "1250", "answer_line", ...),
    # --- boxed
    ("numeric", "Adding, we get \\( 57 + 39 = \\boxed{96} \\).", "96", "boxed", "Adding, we get 57 + 39 = 96"),
    ("numeric", "57 + 39 = 96\n\nTherefore, the total number of apples is \\(\\boxed{96}\\).", "96", "boxed",
     "57 + 39 = 96 Therefore, the total number of apples is 96"),
    ("numeric", "57 + 39 = 96.\n\n### Final Answer\n\\[\n\\boxed{96}\n\\]", "96", "boxed", "57 + 39 = 96."),
    ("numeric", "57 + 39 = 96.\n\nThe final answer is $\\boxed{96}$.", "96", "boxed", "57 + 39 = 96."),
    ("numeric", "First guess \\boxed{37}, but 37 + 59 = 96, so \\boxed{96}.", "96", "boxed", ...),
    ("numeric", "Cost: 2 * 600.\n\\[ \\boxed{\\$1{,}200} \\]", "1200", "boxed", "Cost: 2 * 600."),
    ("numeric", "\\[ \\boxed{\\text{96 apples}} \\]", "96", "boxed", ""),
    # --- "the (final/correct) answer is"
    ("numeric", "Adding gives 57 + 39 = 96, so the answer is 96.", "96", "answer_is", "Adding gives 57 + 39 = 96"),
    ("numeric", "57 + 39 = 96.\n\nTherefore, the final answer is 96 apples.", "96", "answer_is", "57 + 39 = 96."),
    ("numeric", "The answer would be 12 if she kept them all. She gives 2 away, so the answer is 10.", "10",
     "answer_is", "The answer would be 12 if she kept them all. She gives 2 away"),
    # --- the last number
    ("numeric", "She starts with 37.\n\nShe gets 59 more, so 37 + 59 = 96 apples.", "96", "last",
     "She starts with 37. She gets 59 more, so 37 + 59 = 96 apples."),
    ("numeric", "```python\napples = 37 + 59\nprint(apples)\n```\nOutput: 96", "96", "last",
     "apples = 37 + 59 print(apples) Output: 96"),
    ("numeric", "Let me compute.\n\n```\n37 + 59 = 96\n```\n\nAnswer: 96", "96", "answer_line",
     "Let me compute. 37 + 59 = 96"),
    ("numeric", "We have \\( 57 \\times 2 = 114 \\) and \\( 114 \\div 3 = 38 \\).", "38", "last",
     "We have 57 × 2 = 114 and 114 ÷ 3 = 38 ."),
    ("numeric", "*Step 1:* 12 + 7 = 19.\n*Step 2:* 19 - 3 = 16.", "16", "last",
     "Step 1: 12 + 7 = 19. Step 2: 19 - 3 = 16."),
    ("numeric", "I cannot tell from the question.", None, None, "I cannot tell from the question."),
    ("numeric", "", None, None, ""),
    # --- yes / no
    ("yesno", "A shoebox is 30 cm long.\n\nA cat is about 46 cm long, so it would not fit.\n\nAnswer: No.", "no",
     "answer_line", "A shoebox is 30 cm long. A cat is about 46 cm long, so it would not fit."),
    ("yesno", "Yes, light travels fast. But the question asks about sound.\n\n**Final Answer: no**", "no",
     "answer_line", ...),
    ("yesno", "Lake Superior is far smaller.\n\n\\[ \\boxed{\\text{No}} \\]", "no", "boxed",
     "Lake Superior is far smaller."),
    ("yesno", "The Pacific is larger.\n\nSo the answer is yes.", "yes", "answer_is", "The Pacific is larger."),
    ("yesno", "Answer: True", "yes", "answer_line", ""),
    ("yesno", "Cats can climb trees. Yes, they can.\n\nThey often do.", "yes", "last", ...),
    # --- multiple choice
    ("choice", "People ignore sanctions they dislike.\n\nAnswer: (a) ignore", "a", "answer_line",
     "People ignore sanctions they dislike."),
    ("choice", "Not (b): enforcing is what the school does.\n\n**Answer: A**", "a", "answer_line", ...),
    ("choice", "They would yell.\n\n\\[ \\boxed{D} \\]", "d", "boxed", "They would yell."),
    ("choice", "They would avoid it.\n\nThe correct answer is (e) avoid.", "e", "answer_is",
     "They would avoid it."),
    ("choice", "They would ignore it, not (b) or (d).\n\nFinal Answer: ignore", "a", "answer_line", ...),
    ("choice", "Between (b) and (c), the school is (c).", "c", "last", ...),
    # --- text answers (task files): the statement's line, normalised
    ("text", "The longest river in Africa flows north.\n\n**Answer: The Nile.**", "the nile", "answer_line",
     "The longest river in Africa flows north."),
    ("text", "It flows north.\n\n\\[ \\boxed{\\text{Nile}} \\]", "nile", "boxed", "It flows north."),
    ("text", "It flows north through Egypt.\nThe Nile", "the nile", "last", "It flows north through Egypt."),
]


@pytest.mark.parametrize(("answer_type", "text", "answer", "rule", "rationale"), CASES)
def test_teacher_answers_are_read_whole(answer_type, text, answer, rule, rationale):
    got = extract_teacher_answer(answer_type, text, CHOICES if answer_type == "choice" else ())
    assert (got.answer, got.rule) == (answer, rule)
    if rationale is not ...:
        assert got.rationale == rationale
    assert "\n" not in got.rationale and "**" not in got.rationale and "\\[" not in got.rationale


def test_at_least_forty_real_llm_style_answers():
    assert len(CASES) >= 40
    assert sum(rationale is not ... for *_, rationale in CASES) >= 30


def test_the_issues_cases_were_read_wrong_by_the_students_rule():
    """What the student's rule (first block only) made of the issue's right answers: read 37, or nothing."""
    assert extract_answer("numeric", CASES[0][1]) == "37"
    for text in (CASES[1][1], CASES[2][1], CASES[3][1]):
        assert extract_answer("numeric", text) is None


def test_students_keep_the_first_block_rule():
    # A student stops at a blank line: what follows it is not its answer.
    assert extract_answer("numeric", "5 + 3 = 8.\nAnswer: 8\n\nAnswer: 9") == "8"
    assert extract_teacher_answer("numeric", "5 + 3 = 8.\nAnswer: 8\n\nAnswer: 9").answer == "9"


def test_the_step_checker_still_sees_the_steps():
    text = "We add:\n\\[ 22 + 81 = 103 \\]\nthen \\( 103 \\times 2 = 206 \\).\n\nAnswer: 206"
    reading = extract_teacher_answer("numeric", text)
    assert check_steps(reading.reasoning).checked == 2 and check_steps(reading.reasoning).ok
    slipped = extract_teacher_answer("numeric", text.replace("= 103 \\]", "= 203 \\]"))
    assert check_steps(slipped.reasoning).false_steps == ["22 + 81 = 203"]


def test_plain_text_folds_markup_and_keeps_lines():
    assert plain_text("## Step 1\n**Add:** `3 + 4` = 7\n\\[ \\frac{1}{2} \\cdot 8 = 4 \\]") == \
        "Step 1\nAdd: 3 + 4 = 7\n1/2 · 8 = 4"
    assert plain_text("2 * 3 * 4 = 24") == "2 * 3 * 4 = 24"  # a product is not emphasis


# ------------------------------------------------------------------------------- talk about the feedback prompt

TALK = [
    # (reasoning, question, the reasoning kept, the references left: not removable)
    ("The student's initial solution subtracted 32 from 47 instead of adding them.\n47 + 32 = 79 marbles.",
     "", "47 + 32 = 79 marbles.", []),
    ("Given the hint, the correct answer should be 11. She has 5 + 6 = 11 pens.", "", "She has 5 + 6 = 11 pens.", []),
    ("The correct step-by-step solution avoids the student's error by adding. 47 + 32 = 79.", "", "47 + 32 = 79.",
     []),
    ("The previous attempt was wrong. Then 3 * 4 = 12.", "", "Then 3 * 4 = 12.", []),
    ("Unlike the student, we add first: 47 + 32 = 79.", "", "Unlike the student, we add first: 47 + 32 = 79.",
     ["Unlike the student, we add first: 47 + 32 = 79."]),
    ("The mistake was in the second step, where 19 - 3 = 15 was written.", "",
     "The mistake was in the second step, where 19 - 3 = 15 was written.",
     ["The mistake was in the second step, where 19 - 3 = 15 was written."]),
    # The question's own words are not references: a class of students, a hint in a riddle.
    ("Each student reads 12 pages, so 30 * 12 = 360 pages.", "A class of 30 students each reads 12 pages.",
     "Each student reads 12 pages, so 30 * 12 = 360 pages.", []),
    ("12 + 7 = 19. 19 - 3 = 16.", "", "12 + 7 = 19. 19 - 3 = 16.", []),
]


@pytest.mark.parametrize(("reasoning", "question", "kept", "left"), TALK)
def test_feedback_talk_is_cleaned_where_removable(reasoning, question, kept, left):
    assert remove_feedback_talk(reasoning, question) == (kept, left)


def test_the_feedback_prompt_asks_for_a_standalone_solution():
    record = Record(id="q", question="Mia has 12 marbles and buys 7. How many?", answer="19")
    for use_hint in (True, False):
        content = teacher_feedback_messages(record, "12 - 7 = 5.", "numeric", use_hint=use_hint)[-1]["content"]
        assert "for the question alone" in content and "do not mention the student" in content
        assert ("the hint" in content) is use_hint


def test_the_gate_rejects_talk_and_truncation():
    text = "Unlike the student, 12 + 7 = 19.\nAnswer: 19"
    reading = extract_teacher_answer("numeric", text)
    reasoning, left = remove_feedback_talk(reading.reasoning)
    verdict = judge(text, reading.answer, "19", "numeric", "steps", reasoning=reasoning, feedback_talk=left)
    assert (verdict.accepted, verdict.reject_reason) == (False, "refers_to_feedback")
    # A wrong answer is rejected for the answer whatever else it says; a cut-off one as truncated first.
    wrong = judge(text, "20", "19", "numeric", "steps", reasoning=reasoning, feedback_talk=left)
    assert wrong.reject_reason == "wrong_answer"
    cut = judge("12 + 7 = 19.\nAnswer: 19", "19", "19", "numeric", "steps", truncated=True)
    assert (cut.accepted, cut.reject_reason) == (False, "truncated")
    ok = judge("12 + 7 = 19.\nAnswer: 19", "19", "19", "numeric", "steps", reasoning="12 + 7 = 19.")
    assert (ok.accepted, ok.reject_reason, ok.steps_checked) == (True, None, 1)
