"""The step checker (rbyr_ray.tasks.steps): hand-written rationales in the styles the project meets, with
exact expected results, and the datasets' own worked solutions as a corpus of real text."""

from __future__ import annotations

import builtins

import pytest

from rbyr_ray.tasks import check_steps
from rbyr_ray.tasks.steps import StepCheck

# (text, checked, false steps as written, unchecked)
SOLVER = [  # the local solver's wording variants (teacher/backends.py), right and with slips
    ("12 + 7 = 19. 19 - 3 = 16.", 2, [], 0),
    ("First, 8 * 3 = 24. Then 24 / 4 = 6.\nAnswer: 6", 2, [], 0),
    ("We compute 40 - 12 = 28. Next, 28 + 5 = 33.\nAnswer: 33", 2, [], 0),
    ("Step 1: 5 + 4 = 9. Step 2: 9 * 2 = 18. Step 3: 18 / 3 = 6.", 3, [], 0),
    ("Start: 45 / 9 = 5. So 5 * 7 = 35.", 2, [], 0),
    ("Compute: 3 * 4 = 12. After that, 12 + 7 = 19.\nAnswer: 19", 2, [], 0),
    ("17 to begin with, and nothing changes.\nAnswer: 17", 0, [], 0),
    ("12 + 7 = 20. 20 - 3 = 17.\nAnswer: 17", 2, ["12 + 7 = 20"], 0),
    ("First, 8 * 3 = 24. Then 24 / 4 = 5.\nAnswer: 6", 2, ["24 / 4 = 5"], 0),
    ("Step 1: 22 + 81 = 203. Step 2: 203 - 3 = 200.", 2, ["22 + 81 = 203"], 0),
    ("We compute 6 * 7 = 42. Next, 42 + 10 = 53. After that, 53 - 3 = 50.", 3, ["42 + 10 = 53"], 0),
    ("9 * 9 = 81. 81 - 1 = 79. 79 + 2 = 81.", 3, ["81 - 1 = 79"], 0),
    ("5 + 5 = 11. 11 * 2 = 23. 23 - 1 = 22.", 3, ["5 + 5 = 11", "11 * 2 = 23"], 0),
    ("7 * 8 = 54. 54 / 6 = 8. 8 + 8 = 17.", 3, ["7 * 8 = 54", "54 / 6 = 8", "8 + 8 = 17"], 0),
    ("3 * 4 = 12. 12 + 7 = 19.", 2, [], 0),
    ("12 + 7 = 19 19 - 3 = 16", 2, [], 0),  # a student that drops the periods
]
GSM8K = [  # solutions with calculator annotations, and as the reference teacher folds them (no annotations)
    (("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
     "in April and May.\n#### 72"), 2, [], 0),
    (("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
     "$<<0.2*50=10>>10.\n#### 10"), 2, [], 0),
    (("In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's grandparents gave her 15 * 2 = "
     "$<<15*2=30>>30.\nThis means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more."), 3, [], 0),
    ("She has <<5*3=15>>15 apples and eats <<15-4=11>>11 of them... no, she keeps 11.", 2, [], 0),
    ("She had 50-8 = <<52-8=44>>44 bracelets left.", 2, ["50-8 = 44"], 0),  # the text and its annotation differ
    ("Half of the 16 people is <<16/2=9>>9 people.", 1, ["16/2=9"], 0),
    ("Half of the 16 people = <<16/2=8>>8 people.", 1, [], 0),  # the text's own "=" is the annotation's
    ("So it cost 192*100=$1920\n#### 1920", 1, ["192*100=$1920"], 0),  # a real GSM8K slip (train set)
    ("Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May.", 2, [], 0),
    ("The parking lot is 400*500=200,000 There are 200,000*.8=160,000 square feet of parking space", 2, [], 0),
    ("So he has 80 000 x 20/100 = $16 000 left.", 0, [], 1),  # a space as the thousands separator
    ("8 x 1 1/2 = 12 dinner rolls are eaten.", 0, [], 1),  # a mixed number
    ("He will read 21 x (1 and 1/3) = 28 pages.", 0, [], 1),
    ("Gary can bake 2/ 1/5 = 10 cupcakes.", 1, [], 0),  # a glued fraction as the divisor
    ("A bottle lasts 14 / 1 / 4 = 14 * 4 = 56 days.", 2, [], 0),
    ("Nikita = (1/2) 278 + 11 = 150 points", 0, [], 2),  # an implicit product
    ("10 pages per day on day 1 * 2 = 20 pages per day", 0, [], 1),  # "day 1" is a label
    ("-48 + 21 + (-3) = -30\n-30/3 = -10 degrees", 2, [], 0),
    ("-48 + 21 + (-3) = -30 -30/3 = -10 degrees", 2, [], 0),  # the same, folded onto one line
]
EQUATIONS = [  # SVAMP/MultiArith/ASDiv equations, as the datasets write them and as the reference folds them
    ("( 32.0 + 42.0 ) - 35.0 = 39.0", 1, [], 0),
    ("((32.0+42.0)-35.0) = 39", 1, [], 0),
    ("32 + 42 = 74. 74 - 35 = 39.", 2, [], 0),
    ("X=((32.0+42.0)-35.0)", 0, [], 1),
    ("X=((32.0+42.0)-35.0) = 39.0", 1, [], 1),
    ("( 8.0 * 7.0 ) / 4.0 = 14.0", 1, [], 0),
    ("( 8.0 * 7.0 ) / 4.0 = 15.0", 1, ["( 8.0 * 7.0 ) / 4.0 = 15.0"], 0),
    ("99+99=198 cents", 1, [], 0),
    ("He spends $1 / 2 = 50 cents.", 0, [], 1),
    ("17 / 10 = 1 remainder 7.", 1, [], 0),  # stated as the quotient, within the rounding rule
    ("120 - 15 - 20 = 85. 85 / 5 = 17.", 2, [], 0),
]
PROSE = [  # chatty LLM answers: markdown, bullets, LaTeX, words around the numbers
    (("Sure! Let's break it down:\n\n1. Mia starts with 12 marbles.\n2. She buys 7 more: 12 + 7 = 19 marbles.\n"
     "3. She gives away 3: 19 - 3 = 16 marbles.\n\n**Answer: 16**"), 2, [], 0),
    ("- 12 + 7 = 19\n- 19 - 3 = 16", 2, [], 0),  # list bullets are not minus signs
    ("* 12 + 7 = 19\n* 19 - 3 = 16", 2, [], 0),
    ("**12 + 7 = 19**, and then **19 - 3 = 16**.", 2, [], 0),
    ("First we find the total: **3 * 5 = 15** rolls.", 1, [], 0),
    ("The total is \\(12 \\times 3 = 36\\) and half of it is \\(36 \\div 2 = 18\\).", 2, [], 0),
    ("We get $\\frac{3}{4} \\cdot 8 = 6$ cups.", 1, [], 0),
    ("So the baker sells 3 * 5 = 15 rolls. 24 - 15 = 9 rolls are left.", 2, [], 0),
    ("In 4 days he reads 12 * 4 = 48 pages. 48 + 10 = 58 pages in all.", 2, [], 0),
    ("Let x be the number of apples. Then x = 5.", 0, [], 1),
    ("Let x be the apples: x + 3 = 8, so x = 5.", 0, [], 2),
    ("2x + 3 = 11, so 2x = 8 and x = 4.", 0, [], 3),
    ("One hour = 60 minutes, so 2 hours = 120 minutes.", 0, [], 2),
    ("Total = 5 * 3 = 15 apples.", 1, [], 1),
    ("Half of 48 = 24.", 0, [], 1),
    ("3 times 4 + 2 = 14 stickers.", 0, [], 1),  # the run "4 + 2" would miss the "3 times"
    ("He has 5 apples + 3 apples = 8 apples.", 0, [], 1),
    ("The answer is 7 because 3 + 4 = 7.\nAnswer: 7", 1, [], 0),
    ("Answer: 19", 0, [], 0),
    ("I think 6 + 6 = 13, so the answer is 13.", 1, ["6 + 6 = 13"], 0),
    ("We add: 2 + 3 = 5 + 1 = 6.", 2, [], 0),  # a running total
    ("3 * (4 + 2) = 3 * 6 = 18", 2, [], 0),
    ("2 + 3 = 4 + 2 = 6", 2, ["2 + 3 = 4 + 2"], 0),
    ("It costs 5 * 3 = 15 dollars; with tax 15 + 2 = 17 (dollars).", 2, [], 0),
    ("If a == b then a <= b; 3 => 4 is an arrow, and 2 + 2 ≈ 4.", 0, [], 0),
    ("In 3(4 + 2) = 18 the 3 multiplies.", 0, [], 1),
    ("We know 2^3 + 1 = 9.", 0, [], 1),
    ("The sum is 2 + 3 = 5 million dollars.", 0, [], 1),
    ("This is 20 percent: 0.2 * 50 = 10.", 1, [], 0),
    ("So 100 - 40 = 60, I mean 100 - 40 = 70.", 2, ["100 - 40 = 70"], 0),
]
FORMATS = [  # number formats: separators, decimals, fractions, percent, currency, signs, times
    ("$1,200 + $300 = $1,500", 1, [], 0),
    ("1,200 * 3 = 3,600", 1, [], 0),
    ("1,200 * 3 = 3,700", 1, ["1,200 * 3 = 3,700"], 0),
    ("€4.50 x 2 = €9.00", 1, [], 0),
    ("£3 × 4 = £12", 1, [], 0),
    ("0.2x50=10", 1, [], 0),
    (".5 * 4 = 2", 1, [], 0),
    ("12.5 + 7.25 = 19.75", 1, [], 0),
    ("10 / 3 = 3.33", 1, [], 0),     # rounded
    ("10 / 3 = 3.3333", 1, [], 0),
    ("2 / 3 = 0.67", 1, [], 0),      # rounded up
    ("2 / 3 = 0.66", 1, [], 0),      # truncated
    ("2 / 3 = 0.65", 1, ["2 / 3 = 0.65"], 0),
    ("7 / 2 = 3.4", 1, ["7 / 2 = 3.4"], 0),  # 3.5 has one decimal: it must be stated exactly
    ("7 / 2 = 4 buses", 1, [], 0),   # a whole number of buses
    ("1/2 + 1/4 = 3/4", 1, [], 0),
    ("1/2 + 1/4 = 2/3", 1, ["1/2 + 1/4 = 2/3"], 0),
    ("3 / 6 = 1/2 = 0.5", 2, [], 0),
    ("50% * 80 = 40", 1, [], 0),
    ("20% of 50 = 10", 0, [], 1),
    ("1/4 = 25%", 1, [], 0),
    ("0.25 * 100 = 25%", 1, [], 0),
    ("30% + 20% = 50%", 1, [], 0),
    ("30% + 20% = 60%", 1, ["30% + 20% = 60%"], 0),
    ("5 - 8 = -3", 1, [], 0),
    ("−12 + 5 = −7", 1, [], 0),      # Unicode minus
    ("10 – 3 = 7", 1, [], 0),        # en dash
    ("10 - -2 = 12", 1, [], 0),
    ("6 ÷ 2 = 3", 1, [], 0),
    ("6 ÷ 2 = 4", 1, ["6 ÷ 2 = 4"], 0),
    ("4 × 5 = 20", 1, [], 0),
    ("The movie starts at 3:15 + 0:45 = 4:00.", 0, [], 1),
    ("1,5 + 2 = 3,5", 0, [], 1),     # European decimals
    ("0900 - 0130 = 0730", 0, [], 1),  # clock times
    ("5 / 0 = 0", 0, [], 1),         # division by zero: not computable
    ("2 + 3 = 5 apples", 1, [], 0),
    ("2 + 3 = 5 apples and 5 * 2 = 10 pears", 2, [], 0),
    ("He paid $12/hour * 5 hours = $60.", 0, [], 1),
    ("5 = 5", 0, [], 1),
    ("", 0, [], 0),
]
CASES = SOLVER + GSM8K + EQUATIONS + PROSE + FORMATS


def test_there_are_enough_hand_written_cases():
    assert len(CASES) >= 60
    assert sum(1 for c in CASES if c[2]) >= 15 and sum(1 for c in CASES if not c[1]) >= 15


@pytest.mark.parametrize(("text", "checked", "false", "unchecked"), CASES, ids=[c[0][:40] for c in CASES])
def test_check_steps(text, checked, false, unchecked):
    assert check_steps(text) == StepCheck(checked=checked, false_steps=false, unchecked=unchecked)


def test_none_and_ok():
    assert check_steps(None) == StepCheck()
    assert check_steps("3 + 4 = 7").ok and not check_steps("3 + 4 = 8").ok


def test_never_evaluates(monkeypatch):
    def refuse(*_):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    # The call is not read as arithmetic (unchecked), the sum after it is computed and false.
    assert check_steps("__import__('os') = 1. 2 + 2 = 5.") == StepCheck(checked=1, false_steps=["2 + 2 = 5"],
                                                                      unchecked=1)


def test_pathological_text_is_unchecked_not_a_crash():
    # Both false if they were computed: reported as one claim not read, neither checked nor false.
    deep = "(" * 500 + "1" + ")" * 500 + " = 2"
    long = " + ".join(["1"] * 400) + " = 401"
    assert check_steps(deep) == StepCheck(checked=0, false_steps=[], unchecked=1)
    assert check_steps(long) == StepCheck(checked=0, false_steps=[], unchecked=1)
    # Within the limits the same shapes are computed, so the cases above test the limits, not the parser.
    assert check_steps(" + ".join(["1"] * 40) + " = 41") == StepCheck(checked=1, false_steps=[" + ".join(["1"] * 40)
                                                                                             + " = 41"], unchecked=0)
    assert check_steps("= = = 3 + = 4 =") == StepCheck(checked=0, false_steps=[], unchecked=5)


def test_the_datasets_worked_solutions_hold_no_false_step_but_gsm8ks_known_slips():
    """Real text: every SVAMP, MultiArith and ASDiv gold rationale passes; of GSM8K's 1319 test solutions,
    exactly the two whose arithmetic is wrong are caught ("364 / 4 = 273" means 3/4 * 364)."""
    from rbyr_ray.config import TaskConfig
    from rbyr_ray.tasks import gold_rationale, load_task

    for task in ("svamp", "multiarith", "asdiv"):
        data = load_task(TaskConfig(name=task))
        results = [check_steps(gold_rationale(task, r)) for r in data.train + data.test]
        assert sum(c.checked for c in results) > len(results) and not any(c.false_steps for c in results), task
    gsm8k = load_task(TaskConfig(name="gsm8k")).test
    caught = {r.id: c.false_steps for r in gsm8k if (c := check_steps(r.solution.rsplit("####", 1)[0])).false_steps}
    assert caught == {"gsm8k-test-501": ["364 / 4 = 273"], "gsm8k-test-1024": ["$32 - $20 = $300"]}


# ------------------------------------------------------------------------------------------------ the gate


def test_resolve_gate_steps_for_numeric_tasks_answer_where_there_is_nothing_to_compute():
    from rbyr_ray.teacher.stage import resolve_gate

    assert [resolve_gate(g, "numeric") for g in ("auto", "answer", "steps")] == ["steps", "answer", "steps"]
    assert {resolve_gate(g, t) for g in ("auto", "answer", "steps") for t in ("choice", "yesno")} == {"answer"}


@pytest.mark.parametrize(("text", "gate", "accepted", "reason", "false"), [
    ("12 + 7 = 19. 19 - 3 = 16.\nAnswer: 16", "steps", True, None, ""),
    ("12 + 7 = 20. 19 - 3 = 16.\nAnswer: 16", "steps", False, "false_step: 12 + 7 = 20", "12 + 7 = 20"),
    ("22 + 81 = 203. 3 * 3 = 10. 203 - 187 = 16.\nAnswer: 16", "steps", False,
     "false_step: 22 + 81 = 203; 3 * 3 = 10", "22 + 81 = 203; 3 * 3 = 10"),
    ("12 + 7 = 20. 19 - 3 = 16.\nAnswer: 16", "answer", True, None, "12 + 7 = 20"),  # the paper's gate: through
    ("12 + 7 = 19. 19 - 3 = 15.\nAnswer: 15", "steps", False, "wrong_answer", "19 - 3 = 15"),
    ("lorem ipsum dolor", "steps", False, "unparseable", ""),
    ("x = 16, so it is 16.\nAnswer: 16", "steps", True, None, ""),  # nothing checkable is not a false step
    ("12 + 7 = 19. 19 - 3 = 16.\nAnswer: 16\nCheck: 2 + 2 = 5", "steps", True, None, ""),  # after the answer: not trained on
])
def test_judge(text, gate, accepted, reason, false):
    from rbyr_ray.tasks.grading import extract_answer
    from rbyr_ray.teacher.stage import judge

    verdict = judge(text, extract_answer("numeric", text), "16", "numeric", gate)
    assert (verdict.accepted, verdict.reject_reason, verdict.false_steps) == (accepted, reason, false)


def test_judge_records_nothing_for_a_missing_answer_and_a_choice_task():
    from rbyr_ray.teacher.stage import Verdict, judge

    assert judge(None, None, "16", "numeric", "steps") == Verdict(False, None, None, 0)
    verdict = judge("2 + 2 = 5, so (b).\nAnswer: (b)", "b", "b", "choice", "answer")
    assert verdict.accepted and verdict.false_steps is None and verdict.steps_checked == 0


def test_an_unknown_gate_or_mistakes_mode_is_rejected_naming_the_key():
    from rbyr_ray.config import ConfigError, load_config

    assert load_config(None, ["teacher.gate=answer", "exam.mistakes=steps"]).teacher.gate == "answer"
    for override, key in (("teacher.gate=strict", "teacher.gate"), ("exam.mistakes=all", "exam.mistakes")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [override])
