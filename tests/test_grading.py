"""Graders (METHOD.md "Answer extraction"): hand-written model-style outputs per answer type, and properties."""

from __future__ import annotations

import builtins
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbyr_ray.tasks.grading import answers_match, extract_answer, format_number, grade, parse_number

# (model output, the answer a grader must extract; None = no answer)
NUMERIC = [
    ("Answer: 18", "18"),
    ("5 + 13 = 18.\nAnswer: 18.0", "18"),
    ("Answer: 1,234", "1234"),
    ("The total is 1,234,567 dollars.", "1234567"),
    ("Answer: $1,200.50", "1200.5"),
    ("Answer: -7", "-7"),
    ("The temperature drops to −12 degrees.", "-12"),
    ("Answer: 3/4", "0.75"),
    ("Answer: 3 / 4 of the cake", "0.75"),
    ("She has 7 - 3 = 4 apples left.", "4"),
    ("the answer is 42.", "42"),
    ("So the answer is 42 apples.", "42"),
    ("The answer is: 9", "9"),
    ("First 3, then 5, finally 8.", "8"),
    ("I don't know.", None),
    ("", None),
    ("Answer: 12 dollars", "12"),
    ("Answer: 12.50 USD", "12.5"),
    ("Answer: 0.5", "0.5"),
    ("Answer: .5", "0.5"),
    ("Answer: 50%", "50"),
    ("Answer: 7 km", "7"),
    ("Answer: 7km", "7"),
    ("Answer: 18\n\nQuestion: Tom has 99 cards.", "18"),
    ("He buys 3 packs. 3 * 4 = 12\n\nAnswer: 99", "12"),
    ("Answer: 2 + 3 = 5", "5"),
    ("Answer: **25**", "25"),
    ("ANSWER: 25", "25"),
    ("answer:25", "25"),
    ("The answer is 10. Answer: 12", "12"),
    ("I first thought the answer is 10, but the answer is 12.", "12"),
    ("Answer: €30", "30"),
    ("Answer: £7.25", "7.25"),
    ("Answer: -0.25", "-0.25"),
    ("Answer: -3/4", "-0.75"),
    ("It costs $5 each, so 4 * $5 = $20.", "20"),
    ("20 - 5 = 15. 15 / 3 = 5. Answer: 5 hours", "5"),
    ("Answer: 1,000,000", "1000000"),
    ("Answer: 100,000.75", "100000.75"),
    ("The answer is 18.0", "18"),
    ("Answer: 007", "7"),
    ("Answer: 6 pieces of cake", "6"),
    ("Answer: The total is 64.", "64"),
    ("Answer: Tom has 15 marbles", "15"),
    ("There are 24 hours in a day, so 2 days are 48 hours.", "48"),
    ("Answer: 2.50 dollars", "2.5"),
    ("It is on the 3rd floor. Answer: 3", "3"),
    ("Step 1: 4 x 5 = 20\nStep 2: 20 + 1 = 21", "21"),
    ("Answer: none of them", None),
    ("Answer:\n42", "42"),
    ("Answer: 12 apples and 3 pears", "12"),
    ("He runs 5-10 miles a day. Answer: 10", "10"),
    ("Answer: (12)", "12"),
    ("Answer: 12.\nBecause 11 + 1 = 12.", "12"),
    ("5 + 3 = 8 apples.", "8"),
    ("x = 7", "7"),
    ("Answer: 1/3", "1/3"),
    ("0.333 is about a third. Answer: 0.333", "0.333"),
    ("The final answer is -15 degrees.", "-15"),
    ("Total: 4 * 2.5 = 10.0 liters", "10"),
    ("Answer: 9,999", "9999"),
    ("Answer: She pays $-5", "-5"),
]

YESNO = [
    ("Answer: yes", "yes"),
    ("Answer: No", "no"),
    ("Answer: YES", "yes"),
    ("Answer: No.", "no"),
    ("Answer: yes, because the tower is taller.", "yes"),
    ("So the answer is yes.", "yes"),
    ("Thus, the answer is no", "no"),
    ("Answer: True", "yes"),
    ("Answer: false", "no"),
    ("Yes.", "yes"),
    ("no", "no"),
    ("I think not. No.", "no"),
    ("There is no evidence that whales fly. So yes.", "yes"),
    ("Answer: It is not possible, so no.", "no"),
    ("Answer: **Yes**", "yes"),
    ('Answer: "no"', "no"),
    ("Answer: Yes!", "yes"),
    ("Answer: NO", "no"),
    ("The facts say yes. Answer: no", "no"),
    ("maybe", None),
    ("", None),
    ("Answer: maybe", None),
    ("Yes, Paris is in France. Answer: yes", "yes"),
    ("Nope", None),
    ("Yesterday it rained.", None),
    ("Nobody knows.", None),
    ("Answer: yes\n\nAnswer: no", "yes"),
    ("Answer:yes", "yes"),
    ("answer is no.", "no"),
    ("the answer is YES", "yes"),
    ("It is true that cats purr, so yes", "yes"),
    ("It is false that fish walk, so no.", "no"),
    ("Is it? No. Answer: Yes", "yes"),
    ("Answer: no, because a cat is too big.", "no"),
    ("Answer - yes", "yes"),
    ("Answer: (yes)", "yes"),
    ("Answer: Yes (the facts support it)", "yes"),
    ("Answer: no; the tower is shorter", "no"),
    ("Yes or no? Yes", "yes"),
    ("The answer: no", "no"),
    ("Final answer: yes", "yes"),
    ("The final answer is no.", "no"),
    ("A cat can't fit. So no", "no"),
    ("Yes. A cat fits.", "yes"),
    ("No, it would not. Answer: No", "no"),
    ("Y", None),
    ("Answer: definitely yes", "yes"),
    ("Answer:\nyes", "yes"),
    ("the answer is yes.\n\nno", "yes"),
    ("Answer: TRUE.", "yes"),
    ("It is false. Answer: False", "no"),
    ("Lincoln was tall; so was his hat. Answer: Yes.", "yes"),
]

CHOICES = ("ignore", "enforce", "authoritarian", "yell at", "avoid")
CHOICE = [
    ("Answer: (a)", "a"),
    ("Answer: a", "a"),
    ("Answer: A", "a"),
    ("Answer: (B)", "b"),
    ("Answer: c.", "c"),
    ("Answer: D)", "d"),
    ("Answer: E", "e"),
    ("So the answer is (c).", "c"),
    ("the answer is C", "c"),
    ("Answer: (e) avoid", "e"),
    ("Answer: avoid", "e"),
    ("Answer: E avoid", "e"),
    ("Answer: yell at", "d"),
    ("Answer: a lot of things", None),
    ("(a) is wrong; (b) is right", "b"),
    ("I choose (d).", "d"),
    ("Answer: **(c)**", "c"),
    ("Answer: (c) authoritarian, not (a)", "c"),
    ("Answer: c, since (a) is wrong", "c"),
    ("nothing fits", None),
    ("", None),
    ("Answer: f", None),
    ("Answer: (f)", None),
    ("Answer: B.", "b"),
    ("answer: b", "b"),
    ("Answer:b", "b"),
    ("The answer is (E).", "e"),
    ("The best choice is (b) enforce.", "b"),
    ("(a) ignore (b) enforce (c) authoritarian. The answer is (b)", "b"),
    ("Answer: Option C", "c"),
    ("Answer: choice (d)", "d"),
    ("Answer: C: authoritarian", "c"),
    ("Answer: c;", "c"),
    ("Answer: (c)\n\nAnswer: (a)", "c"),
    ("Answer: E!", "e"),
    ("Answer: A good choice is (b)", "b"),
    ("Answer: I think (d)", "d"),
    ("The answer could be (a) or (b)", "b"),
    ("Answer: ( d )", "d"),
    ("Answer: **B**", "b"),
    ("To punish is to enforce. Answer: (b)", "b"),
    ("Answer: Ignore", "a"),
    ("Answer: enforce the rules", "b"),
    ("Answer:\n(c)", "c"),
    ("They would ignore it, so (a).", "a"),
    ("Answer: the sanctions ignore it", None),
    ("Answer: (A) ignore", "a"),
    ("Answer: e.", "e"),
    ("Answer: D", "d"),
    ("the answer is (d) yell at.", "d"),
    ("Answer: (b), enforce", "b"),
    ("answer: (C)", "c"),
]


def _check(answer_type: str, text: str, expected: str | None, choices: tuple[str, ...] = ()) -> None:
    assert extract_answer(answer_type, text, choices) == expected
    if expected is not None:
        assert grade(answer_type, text, expected, choices) is True


def test_at_least_fifty_cases_per_answer_type():
    assert min(len(NUMERIC), len(YESNO), len(CHOICE)) >= 50


@pytest.mark.parametrize(("text", "expected"), NUMERIC)
def test_numeric(text, expected):
    _check("numeric", text, expected)


@pytest.mark.parametrize(("text", "expected"), YESNO)
def test_yesno(text, expected):
    _check("yesno", text, expected)


@pytest.mark.parametrize(("text", "expected"), CHOICE)
def test_choice(text, expected):
    _check("choice", text, expected, CHOICES)


@pytest.mark.parametrize(("predicted", "gold", "same"), [
    ("18", "18.0", True), ("0.75", "3/4", True), ("1,000", "1000", True), ("-5", "-5.0", True),
    ("1/3", "0.333", False), ("-5", "5", False), (None, "5", False), ("abc", "5", False), ("2.5", "5/2", True),
])
def test_answers_match_numeric(predicted, gold, same):
    assert answers_match("numeric", predicted, gold) is same


def test_wrong_answers_grade_false():
    assert grade("numeric", "Answer: 17", "18") is False
    assert grade("yesno", "Answer: no", "yes") is False
    assert grade("choice", "Answer: (a)", "b", CHOICES) is False
    assert grade("numeric", "no number here", "18") is False


def test_unknown_answer_type_is_an_error():
    with pytest.raises(ValueError, match="unknown answer type"):
        extract_answer("date", "Answer: 1")  # type: ignore[arg-type]


def test_grading_never_evaluates_code(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("graders must not evaluate text")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, refuse)
    assert grade("numeric", "Answer: __import__('os').system('true') 2 + 2", "2")
    assert extract_answer("numeric", "Answer: 3 * 3") == "3"


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-10**12, max_value=10**12))
def test_thousands_separators_round_trip(n):
    assert extract_answer("numeric", f"So the total is {n:,} apples.") == str(n)
    assert grade("numeric", f"Answer: {n:,}", str(n))


@settings(max_examples=100, deadline=None)
@given(st.fractions(max_denominator=1000))
def test_format_number_parses_back_exactly(value: Fraction):
    text = format_number(value)
    assert parse_number(text) == value
    assert grade("numeric", f"Answer: {text}", text)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-10**6, max_value=10**6), st.integers(min_value=0, max_value=99))
def test_decimals_with_trailing_zeros_compare_as_numbers(whole, cents):
    written = f"{whole}.{cents:02d}0"  # "18.500" == 18.5
    assert grade("numeric", f"The answer is {written}.", str(Fraction(written)))


@settings(max_examples=120, deadline=None)
@given(st.text(max_size=200))
def test_extraction_total_on_any_text(text):
    numeric = extract_answer("numeric", text)
    assert numeric is None or parse_number(numeric) is not None
    assert extract_answer("yesno", text) in (None, "yes", "no")
    assert extract_answer("choice", text, CHOICES) in (None, "a", "b", "c", "d", "e")
