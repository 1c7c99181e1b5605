"""The built-in tasks' named readers on the real benchmark files, malformed-file errors, the synthetic arith task,
val carving."""

from __future__ import annotations

import builtins
import functools
import json
import logging
import re
import time
from fractions import Fraction
from pathlib import Path

import pytest

from rbyr_ray.config import ArithConfig, TaskConfig
from rbyr_ray.tasks import TASKS, Record, gold_rationale, load_task, resolve_data_dir
from rbyr_ray.tasks.arith import canonical_rationale, generate, parse_question, solve
from rbyr_ray.tasks.benchmarks import evaluate, parse_expression
from rbyr_ray.tasks.grading import format_number, parse_number
from rbyr_ray.tasks.readers import READERS

SIZES = {
    "gsm8k": (7473, 1319),
    "svamp": (700, 300),
    "multiarith": (420, 180),
    "asdiv": (1607, 486),  # docs/data.md: asdiv-w folds 0-3 / fold 4, numeric answers only
    "csqa": (9741, 1221),
    "strategyqa": (1603, 687),
}


def load(task: str, data_dir: Path | None = None) -> tuple[list[Record], list[Record]]:
    """A built-in task's train and test, read by its file's named reader from `data_dir` (default: the benchmarks)."""
    data = load_task(TaskConfig(name=task, data_dir=str(data_dir) if data_dir else None))
    return data.train, data.test


@functools.cache
def splits(task: str) -> tuple[list[Record], list[Record]]:
    return load(task)


def test_every_built_in_task_is_a_file_over_its_own_reader():
    assert set(TASKS) == set(SIZES) | {"arith"}
    assert {name: TASKS[name].reader for name in TASKS} == {name: name for name in TASKS}
    assert set(READERS) == set(TASKS)


@pytest.mark.parametrize("task", sorted(SIZES))
def test_split_sizes(task):
    train, test = splits(task)
    assert (len(train), len(test)) == SIZES[task]


@pytest.mark.parametrize("task", sorted(SIZES))
def test_record_fields(task):
    train, test = splits(task)
    answer_type = TASKS[task].answer_type
    for split, records in (("train", train), ("test", test)):
        assert [r.id for r in records] == [f"{task}-{split}-{i}" for i in range(len(records))]
        for r in records:
            assert r.question and "\n" not in r.question and r.question == r.question.strip()
            if answer_type == "numeric":
                assert format_number(parse_number(r.answer)) == r.answer, r
            elif answer_type == "yesno":
                assert r.answer in ("yes", "no")
            else:
                assert r.answer in "abcde" and len(r.answer) == 1 and len(r.choices) == 5 and all(r.choices)
            assert r.solution if task != "csqa" else r.solution is None


def test_known_records():
    gsm_train, gsm_test = splits("gsm8k")
    assert gsm_train[0].question.startswith("Natalia sold clips to 48")
    assert gsm_train[0].answer == "72" and gsm_train[0].tags == {"steps": "2"}
    assert gsm_test[0].answer == "18"
    svamp = splits("svamp")[0][0]
    assert (svamp.answer, svamp.solution, svamp.tags["type"]) == ("51", "( 76.0 - 25.0 )", "Subtraction")
    assert svamp.question == ("Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each "
                              "pack How much do you have to pay to buy each pack?")
    assert splits("multiarith")[0][0].answer == "39"
    csqa = splits("csqa")[0][0]
    assert csqa.answer == "a" and csqa.choices == ("ignore", "enforce", "authoritarian", "yell at", "avoid")
    assert csqa.tags["concept"] == "punishing"
    sqa = splits("strategyqa")[0][0]
    assert sqa.question == "Hydrogen's atomic number squared exceeds number of Spice Girls?" and sqa.answer == "no"
    assert sqa.tags["hops"] == "3"
    asdiv = splits("asdiv")[0][0]
    assert (asdiv.tags["source_id"], asdiv.answer, asdiv.tags["type"], asdiv.tags["grade"]) == (
        "nluds-0153", "10", "Common-Division", "2")
    assert {r.tags["type"] for r in splits("svamp")[1]} == {"Subtraction", "Addition", "Common-Division",
                                                             "Multiplication"}


def test_gsm8k_gold_keeps_negative_and_comma_answers():
    answers = {r.answer for r in splits("gsm8k")[0]}
    assert "-3" in answers or any(a.startswith("-") for a in answers)
    assert not any("," in a for a in answers)


def test_asdiv_split_is_disjoint_and_skips_are_logged(caplog):
    with caplog.at_level(logging.WARNING):
        train, test = load("asdiv")
    assert "skipped 212 problems" in caplog.text
    assert not {r.tags["source_id"] for r in train} & {r.tags["source_id"] for r in test}
    assert sum(r.tags["asdiv_a"] == "yes" for r in train + test) == 1218  # the arithmetic subset is all numeric


def test_gsm8k_and_csqa_load_fast():
    # ~0.1 s each here; the bound only catches a pathological slowdown, with room for a loaded 2-core machine.
    for task in ("gsm8k", "csqa"):
        start = time.perf_counter()
        load(task)
        assert time.perf_counter() - start < 15.0, task


# ------------------------------------------------------------------------------------ malformed files


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    _write(tmp_path / "gsm8k" / "train.jsonl", f"{good}\n{good}\n{{not json\n{good}\n")
    _write(tmp_path / "gsm8k" / "test.jsonl", good + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'gsm8k' / 'train.jsonl'}:3:")):
        load("gsm8k", tmp_path)


def test_missing_field_names_file_and_line(tmp_path):
    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    _write(tmp_path / "gsm8k" / "train.jsonl", good + "\n")
    _write(tmp_path / "gsm8k" / "test.jsonl", f"{good}\n\n{json.dumps({'question': 'x', 'answer': 'no total'})}\n")
    with pytest.raises(ValueError, match=r"test\.jsonl:3: the answer has no '#### N' line"):
        load("gsm8k", tmp_path)


def test_json_array_item_error_names_its_line(tmp_path):
    item = {"ID": "x", "Body": "Tom has 3 apples.", "Question": "How many?", "Equation": "( 3.0 )",
            "Answer": 3.0, "Type": "Addition"}
    broken = dict(item, Answer="three")
    items = [json.dumps(item, indent=1), json.dumps(broken, indent=1)]
    _write(tmp_path / "svamp" / "rt_train.json", "[\n" + ",\n".join(items) + "\n]\n")
    _write(tmp_path / "svamp" / "rt_test.json", "[" + json.dumps(item) + "]")
    first_item_lines = items[0].count("\n") + 1
    with pytest.raises(ValueError, match=rf"rt_train\.json:{2 + first_item_lines}: field 'Answer'"):
        load("svamp", tmp_path)
    _write(tmp_path / "svamp" / "rt_train.json", '[\n{"ID": "x",\n "Body": }\n]')
    with pytest.raises(ValueError, match=r"rt_train\.json:3: not valid JSON"):
        load("svamp", tmp_path)


def test_csqa_bad_answer_key(tmp_path):
    choices = [{"label": lab, "text": t} for lab, t in zip("ABCDE", "vwxyz")]
    line = {"answerKey": "F", "id": "q", "question": {"stem": "Which?", "choices": choices}}
    _write(tmp_path / "csqa" / "train_rand_split.jsonl", json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=r"csqa\.yaml:\d+: data\.test: no such file: .*dev_rand_split\.jsonl"):
        load("csqa", tmp_path)  # every split's file is found before any is read
    _write(tmp_path / "csqa" / "dev_rand_split.jsonl", json.dumps(dict(line, answerKey="A")) + "\n")
    with pytest.raises(ValueError, match=r"train_rand_split\.jsonl:1: answerKey 'f'"):
        load("csqa", tmp_path)


def test_asdiv_problem_without_answer_names_line(tmp_path):
    xml = ('<?xml version="1.0"?>\n<Machine-Reading-Corpus-File>\n<ProblemSet>\n'
           '<Problem ID="p1" Grade="1"><Body>B.</Body><Question>Q?</Question>\n'
           '<Solution-Type>Sum</Solution-Type><Answer>3</Answer><Formula>1+2=3</Formula></Problem>\n'
           '<Problem ID="p2" Grade="1"><Body>B.</Body><Question>Q?</Question>\n'
           '<Solution-Type>Sum</Solution-Type><Formula>1+2=3</Formula></Problem>\n'
           '</ProblemSet>\n</Machine-Reading-Corpus-File>\n')
    _write(tmp_path / "asdiv" / "ASDiv.xml", xml)
    for sub in ("asdiv-a", "asdiv-w"):
        for k in range(5):
            _write(tmp_path / "asdiv" / "nfolds" / sub / f"fold{k}.txt", "p1\n" if k == 0 else ("p2\n" if k == 4 else ""))
    with pytest.raises(ValueError, match=r"ASDiv\.xml:6: problem p2 has no <Answer>"):
        load("asdiv", tmp_path)


def test_explicit_data_dir_must_exist(tmp_path, monkeypatch):
    monkeypatch.delenv("RBYR_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv("RBYR_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError):
        load_task(TaskConfig(name="svamp"))


# ------------------------------------------------------------------------------------- safe arithmetic


@pytest.mark.parametrize(("text", "value"), [
    ("( 5 + 3 ) - 2", 6), ("((32.0+42.0)-35.0)", 39), ("2 * 3 + 4", 10), ("2 * (3 + 4)", 14),
    ("7 / 2", Fraction(7, 2)), ("-(1 + 2) * 3", -9), ("10 - 2 - 3", 5), ("12 / 2 / 3", 2), (".5 + 1", Fraction(3, 2)),
])
def test_parse_expression(text, value):
    assert evaluate(parse_expression(text)) == value


@pytest.mark.parametrize("text", ["", "2 +", "(2 + 3", "2 + 3)", "__import__('os')", "2 ** 3", "1; 2", "3 x 4"])
def test_parse_expression_rejects(text):
    with pytest.raises(ValueError):
        parse_expression(text)


def test_gold_rationales_are_compact_and_computed(monkeypatch):
    monkeypatch.setattr(builtins, "eval", lambda *_: pytest.fail("eval called"))
    assert gold_rationale("svamp", splits("svamp")[0][0]) == "76 - 25 = 51."
    assert gold_rationale("multiarith", splits("multiarith")[0][0]) == "32 + 42 = 74. 74 - 35 = 39."
    gsm = gold_rationale("gsm8k", splits("gsm8k")[0][0])
    assert gsm == "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May."
    sqa = gold_rationale("strategyqa", splits("strategyqa")[0][0])
    assert sqa.startswith("Hydrogen is the first element") and sqa.endswith("So the answer is no.")
    assert "ignore" in gold_rationale("csqa", splits("csqa")[0][0])
    remainder = Record(id="r", question="q", answer="7", solution="47/6=7 r5")
    assert gold_rationale("asdiv", remainder) == "47 / 6 = 7 remainder 5. So the answer is 7."
    units = Record(id="u", question="q", answer="45",
                   solution="1 (quarter)*25 (cent/quarter) + 1 (dime)*10 (cent/dime) + 2 (nickel)*5 (cent/nickel) = 45")
    assert gold_rationale("asdiv", units) == "1 * 25 = 25. 1 * 10 = 10. 25 + 10 = 35. 2 * 5 = 10. 35 + 10 = 45."


def test_record_row_round_trip():
    record = splits("csqa")[0][3]
    assert Record.from_row(record.to_row()) == record


# ----------------------------------------------------------------------------------------------- arith


def test_arith_is_deterministic_by_seed():
    cfg = ArithConfig(n_train=80, n_test=40, seed=7)
    assert generate(cfg) == generate(cfg)
    assert generate(cfg).train != generate(ArithConfig(n_train=80, n_test=40, seed=8)).train


def test_arith_splits_sizes_disjoint_and_tagged():
    cfg = ArithConfig(n_train=300, n_test=200, min_steps=1, max_steps=4, seed=3)
    data = generate(cfg)
    assert (len(data.train), len(data.test)) == (300, 200)
    assert not {r.question for r in data.train} & {r.question for r in data.test}
    steps = {int(r.tags["steps"]) for r in data.train + data.test}
    assert steps == {1, 2, 3, 4}
    for r in data.train + data.test:
        assert set(r.tags["ops"].split(",")) <= {"add", "sub", "mul", "div"}
        assert int(r.answer) >= 1 and r.solution.endswith(f"= {r.answer}.")


def test_arith_parse_question_round_trip():
    data = generate(ArithConfig(n_train=150, n_test=50, max_steps=4, seed=11))
    for r in data.train + data.test:
        parsed = parse_question(r.question)
        assert parsed is not None, r.question
        start, steps = parsed
        assert str(solve(start, steps)[-1][2]) == r.answer
        assert canonical_rationale(start, steps) == r.solution
    assert parse_question("What is the capital of France?") is None


def test_arith_number_range_and_ops_are_configurable():
    cfg = ArithConfig(n_train=60, n_test=20, min_number=10, max_number=20, ops=["+"], min_steps=2, max_steps=2)
    for r in generate(cfg).train:
        start, steps = parse_question(r.question)
        assert 10 <= start <= 20 and all(s.op == "+" and 10 <= s.operand <= 20 for s in steps)
        assert r.tags == {"steps": "2", "ops": "add"}


def test_arith_custom_templates():
    templates = {"+": ["{Pron} wins {n} extra {obj}."], "-": ["{Pron} drops {n} {obj}."]}
    cfg = ArithConfig(n_train=20, n_test=10, ops=["+", "-"], templates=templates)
    data = generate(cfg)
    assert any("extra" in r.question or "drops" in r.question for r in data.train)
    for r in data.train:
        start, steps = parse_question(r.question, templates)
        assert str(solve(start, steps)[-1][2]) == r.answer


def test_arith_never_evaluates_code(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("no string may be evaluated")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    data = generate(ArithConfig(n_train=30, n_test=10))
    assert all(parse_question(r.question) for r in data.train)


# -------------------------------------------------------------------------------------- load_task / val


def test_val_split_is_carved_from_train():
    full = load_task(TaskConfig(name="svamp"))
    carved = load_task(TaskConfig(name="svamp", val_fraction=0.1), seed=0)
    assert (len(carved.train), len(carved.val), len(carved.test)) == (630, 70, 300)
    assert {r.id for r in carved.train} | {r.id for r in carved.val} == {r.id for r in full.train}
    assert not {r.id for r in carved.train} & {r.id for r in carved.val}
    assert load_task(TaskConfig(name="svamp", val_fraction=0.1), seed=0).val == carved.val
    assert load_task(TaskConfig(name="svamp", val_fraction=0.1), seed=1).val != carved.val
    assert carved.split("val") == carved.val
    with pytest.raises(ValueError):
        carved.split("dev")


def test_limits_apply_after_carving():
    data = load_task(TaskConfig(name="arith", val_fraction=0.2, train_limit=50, test_limit=30))
    assert (len(data.train), len(data.val), len(data.test)) == (50, 30, 30)
    assert data.answer_type == "numeric"


def test_load_task_uses_configured_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("RBYR_DATA_DIR", raising=False)
    good = json.dumps({"question": "Two plus two?", "answer": "2+2=4\n#### 4"})
    _write(tmp_path / "gsm8k" / "train.jsonl", good + "\n" + good + "\n")
    _write(tmp_path / "gsm8k" / "test.jsonl", good + "\n")
    data = load_task(TaskConfig(name="gsm8k", data_dir=str(tmp_path)))
    assert (len(data.train), len(data.test), data.train[1].id, data.test[0].answer) == (2, 1, "gsm8k-train-1", "4")


# ------------------------------------------------------------------------------- arith as a teacher reads it


def test_arith_templates_say_what_the_gold_computes():
    """One sentence per template, each read back by the solver's inversion: the gold result is the operation the
    sentence states, and no multiplication sentence says "gets N times as many" (read by LLMs as "receives N x
    more": issue 23)."""
    from rbyr_ray.tasks.arith import OP_TEMPLATES, QUESTION_TEMPLATE, START_TEMPLATES, Step, _fill, apply_step

    expected = {"+": 24 + 4, "-": 24 - 4, "*": 24 * 4, "/": 24 // 4}
    for op, templates in OP_TEMPLATES.items():
        for template in templates:
            assert not re.search(r"\bgets?\b.*\btimes\b", template), template
            question = " ".join([_fill(START_TEMPLATES[0], "Mia", "she", "coins", 24),
                                 _fill(template, "Mia", "she", "coins", 4), _fill(QUESTION_TEMPLATE, "Mia", "she", "coins")])
            assert parse_question(question) == (24, [Step(op, 4)]), question
            assert apply_step(24, Step(op, 4)) == expected[op]
    assert OP_TEMPLATES["*"][0] == "Then {pron} ends up with {n} times as many {obj} as {pron} had."


def test_arith_demonstrations_are_arith_questions_with_their_gold():
    """The teacher's arith demonstrations use today's templates, and their rationale and answer are exactly what
    the generator's gold and the local solver compute."""
    from rbyr_ray.tasks.prompts import FEW_SHOT
    from rbyr_ray.teacher.backends import SolverBackend

    for question, choices, rationale, answer in FEW_SHOT["arith"]:
        parsed = parse_question(question)
        assert parsed is not None and choices == (), question
        start, steps = parsed
        assert canonical_rationale(start, steps) == rationale and str(solve(start, steps)[-1][2]) == answer
        assert SolverBackend().answer([{"role": "user", "content": f"Question: {question}"}], 0) == (
            f"{rationale}\nAnswer: {answer}")


def test_arith_teacher_request_carries_arith_demonstrations():
    """The stage's own request building sends arith's demonstrations to the teacher (they were dead code), and a
    benchmark without its own keeps its answer type's."""
    from rbyr_ray.config import TeacherConfig
    from rbyr_ray.tasks.prompts import FEW_SHOT
    from rbyr_ray.teacher.stage import build_requests

    data = load_task(TaskConfig(arith={"n_train": 4, "n_test": 2}))
    records = data.train
    rows = build_requests(records, TeacherConfig(), "numeric", task=data.prompts)  # what the run passes
    assert rows == build_requests(records, TeacherConfig(), "numeric", task="arith")
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"cot"}
    for row, record in zip(rows, records):
        messages = json.loads(row["messages"])
        demos = [(messages[i]["content"], messages[i + 1]["content"]) for i in range(1, len(messages) - 1, 2)]
        assert demos == [(f"Question: {q}", f"{rat}\nAnswer: {a}") for q, _, rat, a in FEW_SHOT["arith"]]
        assert messages[-1] == {"role": "user", "content": f"Question: {record.question}"}
    gsm = json.loads(build_requests(records[:1], TeacherConfig(), "numeric", task="gsm8k")[0]["messages"])
    assert gsm[1]["content"] == f"Question: {FEW_SHOT['numeric'][0][0]}"
    bare = json.loads(build_requests(records[:1], TeacherConfig(few_shot=False), "numeric", task="arith")[0]["messages"])
    assert [m["role"] for m in bare] == ["system", "user"]
