"""Task files (rbyr_ray/tasks/taskfile.py, docs/tasks.md): data made here over JSON Lines, JSON, CSV and Parquet,
loaded as a run loads them, checked through the CLI, and every bad input as one line naming file, line and key;
the built-in tasks as task files over named readers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rbyr_ray.config import BUILTIN_TASKS, ConfigError, TaskConfig, load_config
from rbyr_ray.tasks import TASKS, gold_rationale, load_task
from rbyr_ray.tasks import prompts as P
from rbyr_ray.tasks.cli import check_task_file
from rbyr_ray.tasks.graders import normalise_text
from rbyr_ray.tasks.grading import answers_match, extract_answer, grade
from rbyr_ray.tasks.readers import READERS
from rbyr_ray.tasks.taskfile import (
    BUILTIN_DIR,
    TaskFileError,
    TaskPrompts,
    cut_solution,
    read_task_file,
    task_prompts,
)

CAPITALS = [("France", "Paris", "europe"), ("Japan", "Tokyo", "asia"), ("Kenya", "Nairobi", "africa"),
            ("Peru", "Lima", "americas"), ("Italy", "Rome", "europe"), ("Egypt", "Cairo", "africa"),
            ("Chile", "Santiago", "americas"), ("Nepal", "Kathmandu", "asia"), ("Spain", "Madrid", "europe"),
            ("Ghana", "Accra", "africa")]


def write(path, text):
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def text_task(tmp_path):
    """A text-answer task over JSON Lines: one source, a seeded test fraction, ids and tags from fields."""
    jsonl(tmp_path / "capitals.jsonl", [{"qid": f"cap{i}", "country": c, "kind": "capital", "city": k, "region": r}
                                        for i, (c, k, r) in enumerate(CAPITALS)])
    return write(tmp_path / "capitals.yaml", """
        name: capitals
        data:
          source: capitals.jsonl
          test_fraction: 0.3
          seed: 7
        fields:
          question: "What is the {kind} of {country}?"
          answer: city
          id: qid
          tags: [region]
        answer_type: text
        generation:
          max_new_tokens: 48
        """)


@pytest.fixture
def choice_task(tmp_path):
    """A multiple-choice task over CSV: one column per option written "A)text", gold letters upper case."""
    rows = [("Which one is a fruit?", "A)apple", "B)chair", "C)road", "D)cloud", "A"),
            ("Which one is cold?", "A)fire", "B)ice", "C)sun", "D)oven", "B"),
            ("Which one can fly?", "A)stone", "B)fish", "C)bird", "D)table", "C"),
            ("Which one is a colour?", "A)seven", "B)loud", "C)slow", "D)green", "D")]
    for name, part in (("train.csv", rows[:3]), ("test.csv", rows[3:])):
        with open(tmp_path / name, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["question", "A", "B", "C", "D", "gold"])
            out.writerows(part)
    return write(tmp_path / "quiz.yaml", """
        data:
          train: train.csv
          test: test.csv
        fields:
          question: question
          answer: gold
          choices: [A, B, C, D]
        answer_type: choice
        """)


@pytest.fixture
def numeric_task(tmp_path):
    """A numeric task over Parquet with worked solutions that end on their own answer line."""
    def table(rows):
        return pa.table({"problem": [r[0] for r in rows], "solution": [r[1] for r in rows],
                         "result": [r[2] for r in rows]})
    pq.write_table(table([("Tom has 3 apples and buys 4 more. How many apples does he have?",
                           "3 + 4 = 7.\n#### 7", "7"),
                          ("5 boxes hold 6 pens each. How many pens?", "5 * 6 = 30.\nThe answer is 30.", "30.0"),
                          ("A rope of 10 m is cut in 4 equal parts. How long is a part?", "10 / 4 = 2.5.\nAnswer: 2.5",
                           "2.50")]), tmp_path / "train.parquet")
    pq.write_table(table([("Ann had 9 cards and gave away 2. How many are left?", "9 - 2 = 7.\n#### 7", "7")]),
                   tmp_path / "test.parquet")
    return write(tmp_path / "sums.yaml", """
        data: {train: train.parquet, test: test.parquet}
        fields: {question: problem, answer: result, solution: solution}
        answer_type: numeric
        """)


def test_text_task_over_jsonl_with_a_seeded_test_fraction(text_task):
    data = load_task(TaskConfig(file=str(text_task)))
    assert (data.name, data.answer_type, data.max_new_tokens, data.source) == ("capitals", "text", 48, str(text_task))
    assert (len(data.train), len(data.test), data.val) == (7, 3, [])
    assert sorted(r.id for r in data.train + data.test) == sorted(f"cap{i}" for i in range(10))
    again = load_task(TaskConfig(file=str(text_task)))
    assert [r.id for r in again.test] == [r.id for r in data.test]  # seeded
    first = next(r for r in data.train + data.test if r.id == "cap0")
    assert (first.question, first.answer, first.tags) == ("What is the capital of France?", "Paris",
                                                          {"region": "europe"})
    # The text answer type: the final answer after "Answer:", compared after normalisation.
    assert grade("text", "France's capital is well known.\nAnswer:  the PARIS. ", "the paris")
    assert grade("text", "The capital of France.\nParis.", "Paris")  # no cue: the block's last line
    assert not grade("text", "It is Paris.", "Paris")  # exact match: no words around the answer
    assert not grade("text", "Answer: Lyon", "Paris")
    assert extract_answer("text", "Reasoning.\nAnswer: « New  York »!\n\nQuestion: next") == "new york"
    assert normalise_text("  U.S. ") == "u.s" and not answers_match("text", "us", "U.S.")


def test_text_task_limits_and_val_fraction_apply_as_for_builtins(text_task):
    data = load_task(TaskConfig(file=str(text_task), train_limit=3, test_limit=2, val_fraction=0.3), seed=1)
    assert (len(data.train), len(data.test), len(data.val)) == (3, 2, 2)


def test_choice_task_over_csv_with_upper_case_letters(choice_task):
    data = load_task(TaskConfig(file=str(choice_task)))
    assert [(r.id, r.answer) for r in data.train] == [("quiz-train-1", "a"), ("quiz-train-2", "b"),
                                                      ("quiz-train-3", "c")]
    assert data.train[0].choices == ("apple", "chair", "road", "cloud")
    assert data.test[0].answer == "d" and data.max_new_tokens == 256
    prefix = P.student_prefix(data.train[0])
    assert prefix == "Question: Which one is a fruit?\nAnswer Choices: (a) apple (b) chair (c) road (d) cloud\nReasoning: "
    # A file that names only data and fields gets today's prompts, exactly as a built-in task of its type does.
    assert data.prompts.cot_messages(data.train[0]) == P.teacher_cot_messages(data.train[0], "choice")
    assert data.prompts.feedback_messages(data.train[0], "x") == P.teacher_feedback_messages(data.train[0], "x",
                                                                                           "choice")


def test_choices_as_one_list_field_or_one_text(tmp_path):
    jsonl(tmp_path / "d.jsonl", [{"q": "Pick the even number", "opts": ["(a) 3", "(b) 4", "(c) 5"], "a": "(b)"},
                                 {"q": "Pick the odd number", "opts": "A) 2 B) 6 C) 9", "a": "9"},
                                 {"q": "Which is a germ?", "opts": ["E. coli", "a cat"], "a": "A"}])
    write(tmp_path / "t.yaml", """
        data: {train: d.jsonl, test: d.jsonl}
        fields: {question: q, answer: a, choices: opts}
        answer_type: choice
        """)
    data = load_task(TaskConfig(file=str(tmp_path / "t.yaml")))
    assert [(r.choices, r.answer) for r in data.train] == [(("3", "4", "5"), "b"), (("2", "6", "9"), "c"),
                                                           (("E. coli", "a cat"), "a")]


def test_numeric_task_over_parquet_with_worked_solutions(numeric_task):
    data = load_task(TaskConfig(file=str(numeric_task)))
    assert [(r.answer, r.solution) for r in data.train] == [("7", "3 + 4 = 7."), ("30", "5 * 6 = 30."),
                                                            ("2.5", "10 / 4 = 2.5.")]
    # The `reference` teacher answers from the cut solution, looked up by question text as for built-in tasks.
    from rbyr_ray.teacher.backends import ReferenceBackend

    ref = ReferenceBackend.from_task(data)
    answer = ref.answer(data.prompts.cot_messages(data.train[1]), variant=0)
    assert answer == "5 * 6 = 30.\nAnswer: 30" and grade("numeric", answer, data.train[1].answer)
    assert gold_rationale(None, data.train[0]) == "3 + 4 = 7."
    assert cut_solution("a\nb = 2\nFinal answer: 2") == "a\nb = 2" and cut_solution("7") == "7"


def test_json_array_under_a_key_and_ids_from_line_numbers(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"version": 1, "items": [
        {"q": "Is ice cold?", "y": True}, {"q": "Is fire cold?", "y": "No"}]}))
    write(tmp_path / "yn.yaml", """
        data:
          train: {path: d.json, key: items}
          test: {path: d.json, key: items}
        fields: {question: q, answer: y}
        answer_type: yesno
        """)
    data = load_task(TaskConfig(file=str(tmp_path / "yn.yaml")))
    assert [(r.id, r.answer) for r in data.test] == [("yn-test-1", "yes"), ("yn-test-2", "no")]


def test_prompts_from_the_file(tmp_path, text_task):
    (tmp_path / "demos.yaml").write_text(json.dumps([
        {"question": "What is the capital of Chad?", "rationale": "Chad's capital is N'Djamena.",
         "answer": "N'Djamena"}]))
    spec = {"prompts": {"teacher_system": "Be brief. End with 'Answer: X', X being {answer_form}.",
                        "answer_form": "a city name", "few_shot": "demos.yaml",
                        "feedback": "{question_block}Wrong: {wrong_rationale}\n{hint}Fix it; answer as {answer_form}."}}
    data = load_task(TaskConfig(file=str(text_task), spec=spec))
    record = data.train[0]
    assert data.prompts.cot_messages(record) == [
        {"role": "system", "content": "Be brief. End with 'Answer: X', X being a city name."},
        {"role": "user", "content": "Question: What is the capital of Chad?"},
        {"role": "assistant", "content": "Chad's capital is N'Djamena.\nAnswer: N'Djamena"},
        {"role": "user", "content": f"Question: {record.question}"}]
    assert len(data.prompts.cot_messages(record, few_shot=False)) == 2
    feedback = data.prompts.feedback_messages(record, "It is\nLyon.\nAnswer: Lyon", use_hint=True)
    assert feedback[1]["content"] == (f"Question: {record.question}\nWrong: It is Lyon. Answer: Lyon\n"
                                      f"Hint: the correct answer is {record.answer}.\nFix it; answer as a city name.")
    # A built-in task's prompts are its file's: prompts.py's, with its own demonstrations.
    from rbyr_ray.tasks import TASKS

    arith = load_task(TaskConfig(name="arith", train_limit=1))
    assert isinstance(arith.prompts, TaskPrompts) and arith.max_new_tokens == TASKS["arith"].max_new_tokens == 96
    assert arith.prompts.demos == tuple(P.FEW_SHOT["arith"])


def test_the_student_prefix_and_stop_are_the_task_files(text_task):
    """prompts.student and generation.stop change what the student is asked with (exam, training) and where its
    answer ends; unset, they are today's ("Question: ...\nReasoning: ", a blank line)."""
    from rbyr_ray.student.exam import exam_items

    default = load_task(TaskConfig(file=str(text_task)))
    record = default.train[0]
    assert default.prompts.student_prefix(record) == P.student_prefix(record) and default.prompts.stop == "\n\n"
    spec = {"prompts": {"student": "Q: {question}\nA:"}, "generation": {"stop": "\n"}}
    data = load_task(TaskConfig(file=str(text_task), spec=spec))
    demo = data.train[1]
    assert data.prompts.student_prefix(record) == f"Q: {record.question}\nA:"
    assert data.prompts.student_prefix(record, [(demo, "It is so.")]) == (
        f"Q: {demo.question}\nA:It is so.\nAnswer: {demo.answer}\nQ: {record.question}\nA:")
    assert [i["prompt"] for i in exam_items(data.test[:2], 1, 0, data.prompts)] == [
        f"Q: {r.question}\nA:" for r in data.test[:2]]
    with pytest.raises(ConfigError, match=r"prompts.student: .*template field \{answer\}: expected one of "
                                          r"question_block, question, choices"):
        load_task(TaskConfig(file=str(text_task), spec={"prompts": {"student": "{question} = {answer}"}}))
    with pytest.raises(ConfigError, match=r"generation.stop"):
        load_task(TaskConfig(file=str(text_task), spec={"generation": {"stop": ""}}))


def test_spec_overrides_through_the_experiment_config(text_task):
    cfg = load_config(None, [f"task.file={text_task}", "task.name=null", "task.spec.generation.max_new_tokens=17",
                             "task.spec.data.test_fraction=0.5"])
    data = load_task(cfg.task)
    assert (data.max_new_tokens, len(data.test)) == (17, 5)
    with pytest.raises(ConfigError, match=r"override 'generation.max_new_tokens=0': generation.max_new_tokens"):
        load_task(TaskConfig(file=str(text_task), spec={"generation": {"max_new_tokens": 0}}))
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, [f"task.file={text_task}", "task.name=gsm8k"])
    assert os.path.isabs(TaskConfig(file="rel/task.yaml").file)


def _grader_module(tmp_path, monkeypatch, body):
    (tmp_path / "my_graders.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_graders", None)
    from rbyr_ray.tasks.graders import load_grader

    load_grader.cache_clear()


def test_a_user_grader(tmp_path, monkeypatch):
    _grader_module(tmp_path, monkeypatch, """
        def same_set(answer, gold):
            return sorted(answer.replace(" ", "").split(",")) == sorted(gold.split(","))
        """)
    jsonl(tmp_path / "d.jsonl", [{"q": "Name the primes below 6", "a": "2,3,5"}])
    write(tmp_path / "t.yaml", """
        data: {train: d.jsonl, test: d.jsonl}
        fields: {question: q, answer: a}
        answer_type: my_graders:same_set
        """)
    data = load_task(TaskConfig(file=str(tmp_path / "t.yaml")))
    assert data.answer_type == "my_graders:same_set" and data.prompts.form() == "the final answer, as short as possible"
    assert grade(data.answer_type, "Primes: 5, 3 and 2.\nAnswer: 5, 3, 2", "2,3,5")
    assert not grade(data.answer_type, "Answer: 2, 3", "2,3,5")


def error_of(tmp_path, yaml_text, rows=None, name="t.yaml", data_name="d.jsonl"):
    if rows is not None:
        jsonl(tmp_path / data_name, rows)
    write(tmp_path / name, yaml_text)
    with pytest.raises((TaskFileError, ConfigError)) as info:
        load_task(TaskConfig(file=str(tmp_path / name)))
    return str(info.value)


GOOD_ROWS = [{"q": "What is 2 + 2?", "a": "4"}, {"q": "What is 3 + 3?", "a": "6"}]


@pytest.mark.parametrize("yaml_text, rows, expected", [
    # a missing data file, named with the task file's line and key
    ("data: {train: d.jsonl, test: nowhere.jsonl}\nfields: {question: q, answer: a}\nanswer_type: numeric\n",
     GOOD_ROWS, r"t\.yaml:1: data\.test: no such file: .*nowhere\.jsonl"),
    # a split without a source
    ("data: {train: d.jsonl}\nfields: {question: q, answer: a}\nanswer_type: numeric\n",
     GOOD_ROWS, r"t\.yaml:1: data: .*the test split has no source"),
    # an unknown key in the task file, with a suggestion
    ("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: q, answer: a, solutoin: s}\nanswer_type: numeric\n",
     GOOD_ROWS, r"t\.yaml:2: fields\.solutoin: unknown key; did you mean 'solution'"),
    # a field the records lack
    ("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: question, answer: a}\nanswer_type: numeric\n",
     GOOD_ROWS, r"d\.jsonl:1: no field 'question' \(fields\.question in .*t\.yaml:2"),
    # a template naming a field the records lack
    ("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: '{q} {context}', answer: a}\nanswer_type: numeric\n",
     GOOD_ROWS, r"d\.jsonl:1: no field 'context'"),
    # an unreadable gold answer, naming its line
    ("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: q, answer: a}\nanswer_type: numeric\n",
     [*GOOD_ROWS, {"q": "What is 1 + 1?", "a": "two"}], r"d\.jsonl:3: gold answer 'two' is not a number"),
    ("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: q, answer: a}\nanswer_type: yesno\n",
     [{"q": "Is it?", "a": "maybe"}], r"d\.jsonl:1: gold answer 'maybe' is not yes or no"),
    ("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: q, answer: a, choices: c}\nanswer_type: choice\n",
     [{"q": "Pick", "c": ["A)x", "B)y"], "a": "D"}], r"d\.jsonl:1: gold answer 'D' is not the letter .* 2 choices"),
    # duplicate ids
    ("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: q, answer: a, id: id}\nanswer_type: numeric\n",
     [{"id": "x", "q": "1?", "a": "1"}, {"id": "x", "q": "2?", "a": "2"}], r"d\.jsonl:2: duplicate id 'x' in train"),
    # a bad template and an unknown answer type
    (("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: q, answer: a}\nanswer_type: numeric\n"
     "prompts: {feedback: '{question_block} {mood}'}\n"), GOOD_ROWS, r"t\.yaml:4: prompts\.feedback: .*\{mood\}"),
    ("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: q, answer: a}\nanswer_type: fuzzy\n",
     GOOD_ROWS, r"t\.yaml:3: answer_type: .*package\.module:function"),
    # a grader that cannot be imported
    ("data: {train: d.jsonl, test: d.jsonl}\nfields: {question: q, answer: a}\nanswer_type: no_such_mod:grade\n",
     GOOD_ROWS, r"t\.yaml:3: answer_type: grader 'no_such_mod:grade': cannot import no_such_mod"),
    # the hub, never by default
    ("data: {hub: {name: gsm8k}}\nfields: {question: q, answer: a}\nanswer_type: numeric\n",
     GOOD_ROWS, r"t\.yaml:1: data\.hub: .*task\.allow_hub_download=true"),
])
def test_bad_input_is_one_line_naming_file_line_and_key(tmp_path, yaml_text, rows, expected):
    message = error_of(tmp_path, yaml_text, rows)
    assert __import__("re").search(expected, message), message
    assert len(message.strip().splitlines()) <= 2  # "invalid task file:" + the one problem


def test_empty_split_and_missing_task_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    message = error_of(tmp_path, "data: {train: d.jsonl, test: empty.jsonl}\nfields: {question: q, answer: a}\n"
                                 "answer_type: numeric\n", GOOD_ROWS)
    assert "t.yaml:1: data.test: no records" in message
    with pytest.raises(TaskFileError, match="no such task file"):
        load_task(TaskConfig(file=str(tmp_path / "nope.yaml")))


def test_a_grader_that_raises_names_the_line(tmp_path, monkeypatch):
    _grader_module(tmp_path, monkeypatch, """
        def picky(answer, gold):
            if gold == "bad":
                raise KeyError(gold)
            return answer == gold
        """)
    message = error_of(tmp_path, "data: {train: d.jsonl, test: d.jsonl}\nfields: {question: q, answer: a}\n"
                                 "answer_type: my_graders:picky\n",
                       [{"q": "1?", "a": "ok"}, {"q": "2?", "a": "bad"}])
    assert message.startswith("d.jsonl:2: grader 'my_graders:picky' raised KeyError") or \
        message.endswith("grader 'my_graders:picky' raised KeyError: 'bad' (answer 'bad', gold 'bad')"), message


def rbyr(*args, cwd=None):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "rbyr_ray.cli", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=120, cwd=cwd)


def test_tasks_check_through_the_cli(tmp_path, choice_task, numeric_task):
    done = rbyr("tasks", "check", str(choice_task))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "task quiz (choice)" in out and "splits: train 3, test 1, val 0; max_new_tokens 256" in out
    assert "quiz-train-1: 'Which one is a fruit?' choices=['apple', 'chair', 'road', 'cloud'] -> 'a'" in out
    assert "  Answer Choices: (a) apple (b) chair (c) road (d) cloud\n  Reasoning: " in out
    assert "teacher prompt (round 1):" in out and "feedback prompt (rounds >= 2):" in out
    assert "4 of 4 gold answers grade correct; ok" in out
    report = json.loads(rbyr("tasks", "check", str(numeric_task), "--json").stdout)
    assert report["splits"] == {"train": 3, "test": 1, "val": 0}
    assert report["records"][0]["solution"] == "3 + 4 = 7."
    assert report["teacher_prompt"][-1]["content"] == "Question: " + report["records"][0]["question"]
    # bad input: one line on stderr, exit 2
    (tmp_path / "bad.yaml").write_text("data: {train: train.csv, test: test.csv}\n"
                                       "fields: {question: q, answer: gold, choices: [A, B, C, D]}\n"
                                       "answer_type: choice\n")
    done = rbyr("tasks", "check", "bad.yaml", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("rbyr-ray tasks: error: train.csv:2: no field 'q'"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_score_takes_a_task_file(tmp_path, text_task):
    jsonl(tmp_path / "out.jsonl", [{"output": "Answer: paris.", "gold": "Paris"}, {"output": "Lyon", "gold": "Paris"}])
    done = rbyr("score", "--task", str(text_task), str(tmp_path / "out.jsonl"), "--json")
    assert done.returncode == 0, done.stderr
    assert [v["correct"] for v in json.loads(done.stdout)["verdicts"]] == [True, False]


def test_a_uri_source_is_read_through_ray_data(ray_cluster, tmp_path):
    """file:// stands for s3:// or gs://: the same Ray Data readers, in file order."""
    jsonl(tmp_path / "d.jsonl", [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(6)])
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["q", "a"], *[[f"What is {i} + 2?", i + 2] for i in range(4)]])
    pq.write_table(pa.table({"q": ["What is 5 + 5?"], "a": ["10"]}), tmp_path / "d.parquet")
    write(tmp_path / "t.yaml", f"""
        data:
          train: file://{tmp_path}/d.jsonl
          test: file://{tmp_path}/d.csv
          val: file://{tmp_path}/d.parquet
        fields: {{question: q, answer: a}}
        answer_type: numeric
        """)
    data = load_task(TaskConfig(file=str(tmp_path / "t.yaml")))
    assert [r.answer for r in data.train] == ["1", "2", "3", "4", "5", "6"]
    assert [(r.id, r.answer) for r in data.test] == [("t-test-1", "2"), ("t-test-2", "3"), ("t-test-3", "4"),
                                                     ("t-test-4", "5")]
    assert [r.question for r in data.val] == ["What is 5 + 5?"]


def test_a_real_teacher_stage_and_exam_on_task_files(ray_cluster, tmp_path, numeric_task, text_task):
    """The `reference` teacher answers a task file's questions from its worked solutions, through the real
    local server and the Ray Data teacher stage (CoT, then feedback); the real student is examined on a
    text-answer task file, graded inside the Ray Data actors by the file's answer type."""
    import pandas as pd
    from ray.data import DataContext

    from rbyr_ray.config import ExperimentConfig, TeacherConfig
    from rbyr_ray.student.exam import run_exam
    from rbyr_ray.teacher.server import LocalTeacherServer
    from rbyr_ray.teacher.stage import annotate

    DataContext.get_current().enable_progress_bars = False
    task_cfg = TaskConfig(file=str(numeric_task))
    data = load_task(task_cfg)
    cfg = TeacherConfig(samples=1, retry_backoff_s=0.01, retry_backoff_max_s=0.05)
    ledger = tmp_path / "ledger.sqlite"
    with LocalTeacherServer("reference", task_cfg, cfg, seed=3) as url:
        cot = annotate(data.train, cfg, answer_type=data.answer_type, base_url=url, ledger_path=ledger,
                       out_path=tmp_path / "round1", task=data.prompts)
        mistakes = {r.id: ["I guess.\nAnswer: 1"] for r in data.train[:2]}
        feedback = annotate(data.train, cfg, answer_type=data.answer_type, base_url=url, ledger_path=ledger,
                            out_path=tmp_path / "round2", mistakes=mistakes, seed=1, task=data.prompts)
    rows = pd.read_parquet(tmp_path / "round1" / "teacher.parquet").sort_values("id")
    assert (cot.questions, cot.accepted, cot.failed) == (3, 3, 0)
    assert any("3 + 4 = 7." in r for r in rows["rationale"])
    assert (feedback.questions, feedback.accepted) == (2, 2)
    assert set(pd.read_parquet(tmp_path / "round2" / "teacher.parquet")["kind"]) == {"feedback"}

    # The task's own stop (a space): every answer ends before its first space, inside the actors' engines.
    text = load_task(TaskConfig(file=str(text_task), spec={"generation": {"stop": " "}}))
    exam_cfg = ExperimentConfig()
    exam_cfg.exam = exam_cfg.exam.model_copy(update={"batch_size": 8})
    result = run_exam(text.test, "smollm2-135m", exam_cfg, answer_type=text.answer_type, samples=1, greedy=True,
                      max_new_tokens=12, out_path=tmp_path / "eval.parquet", seed=0, task=text.prompts)
    graded = result.rows.set_index("id")
    assert not any(" " in r.strip() for r in graded["rationale"]), list(graded["rationale"])
    assert sorted(graded.index) == sorted(r.id for r in text.test) and graded["error"].isna().all()
    for record in text.test:  # the actors graded with the text answer type, as the driver does
        row = graded.loc[record.id]
        assert row["predicted"] == extract_answer("text", row["rationale"])
        assert bool(row["correct"]) == grade("text", row["rationale"], record.answer)


def test_the_example_task_of_the_docs(tmp_path):
    """scripts/make_example_task.py writes the task file docs/tasks.md shows; it loads and checks clean."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_example_task.py"
    spec = importlib.util.spec_from_file_location("make_example_task", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.write_example(tmp_path)
    data = load_task(TaskConfig(file=str(path)))
    assert (data.name, len(data.train), len(data.test), data.max_new_tokens) == ("clock", 60, 20, 64)
    first = data.train[0]
    assert first.solution.endswith(f"= {first.answer}.") and "####" not in first.solution
    assert data.test[0].id == "clock-60" and set(first.tags) == {"hours"}
    docs = (Path(__file__).resolve().parents[1] / "docs" / "tasks.md").read_text()
    body = "\n".join(line for line in module.TASK_FILE.splitlines() if not line.startswith("#"))
    assert textwrap.indent(body, "   ") in docs  # the docs show the file the script writes
    assert module.write_example(tmp_path / "again").read_text() == path.read_text()
    assert (tmp_path / "again" / "train.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()


def test_a_builtin_task_takes_prompt_and_budget_overrides_and_the_feedback_sweep_config():
    """task.spec.* changes a built-in's file like any task file's (prompts, budget); tune_configs/feedback_prompts.yaml
    sweeps the feedback template that way, one ledger for all."""
    from pathlib import Path

    from rbyr_ray.tune.spec import load_tune_config, trial_config

    cfg = load_config(None, ["task.arith.n_train=2", "task.spec.generation.max_new_tokens=33",
                             'task.spec.prompts.feedback="{question_block}Wrong: {wrong_rationale}\\n{hint}Fix it."'])
    data = load_task(cfg.task)
    record = data.train[0]
    assert data.max_new_tokens == 33
    assert data.prompts.cot_messages(record) == task_prompts("arith", "numeric").cot_messages(record)
    assert data.prompts.feedback_messages(record, "a\nb", use_hint=False)[1]["content"] == (
        f"Question: {record.question}\nWrong: a b\nFix it.")
    with pytest.raises(ConfigError, match="data.reader arith makes the records itself; remove `fields`"):
        load_task(load_config(None, ["task.spec.fields.question=q", "task.spec.fields.answer=a"]).task)
    with pytest.raises(ConfigError, match="prompts.feedbak: unknown key; did you mean 'feedback'"):
        load_task(load_config(None, ["task.spec.prompts.feedbak=x"]).task)

    sweep = load_tune_config(Path(__file__).resolve().parents[1] / "tune_configs" / "feedback_prompts.yaml")
    rendered = set()
    for template in sweep.space["task.spec.prompts.feedback"].grid:
        trial = trial_config(sweep, {"task.spec.prompts.feedback": template}, ledger="sweep/ledger.sqlite",
                             run_dir=None)
        task = load_task(trial.task, seed=trial.seed)
        assert trial.teacher.ledger == "sweep/ledger.sqlite" and trial.eval.split == "val" and task.val
        assert task.prompts.cot_messages(task.train[0]) == task_prompts("arith", "numeric").cot_messages(task.train[0])
        rendered.add(task.prompts.feedback_messages(task.train[0], "x")[1]["content"])
    assert len(rendered) == 3


# ------------------------------------------------------------------------- the built-ins are task files
# rbyr_ray/tasks/builtin/*.yaml over the named readers of tasks/readers.py; a user's file can name a reader too.

GSM8K_LINES = [{"question": "Ann has 3 pens and buys  4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
               {"question": "Bo has 10 cards and gives away 2. How many are left?", "answer": "10 - 2 = 8\n#### 8"},
               {"question": "A box holds 6 eggs. How many eggs are in 5 boxes?", "answer": "6 * 5 = 30\n#### 30"}]


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_each_built_in_file_validates_and_names_a_known_reader(name):
    tf = read_task_file(BUILTIN_DIR / f"{name}.yaml")
    assert tf.spec.name == name and tf.spec.data.reader in READERS and tf.spec.fields is None
    assert TASKS[name].answer_type == tf.spec.answer_type and TASKS[name].max_new_tokens >= 96
    assert tf.spec.generation.stop == "\n\n" and tf.spec.prompts.student is None  # today's student format
    assert (BUILTIN_DIR / tf.spec.prompts.few_shot).is_file()


def test_the_built_ins_are_the_config_choices_and_the_task_list():
    assert sorted(TASKS) == list(BUILTIN_TASKS) == ["arith", "asdiv", "csqa", "gsm8k", "multiarith", "strategyqa",
                                                     "svamp"]
    with pytest.raises(ConfigError, match=r"task\.name: expected Literal\[.*'svamp'"):
        load_config(None, ["task.name=mnist"])


def test_tasks_check_on_a_built_in_by_path_and_by_name(capsys):
    assert check_task_file(str(BUILTIN_DIR / "svamp.yaml")) == 0
    out = capsys.readouterr().out
    assert "task svamp (numeric)" in out and "splits: train 700, test 300, val 0; max_new_tokens 192" in out
    assert "svamp-train-0: 'Each pack of dvds costs 76 dollars." in out and "1000 of 1000 gold answers" in out
    assert check_task_file("arith", as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == {"train": 300, "test": 200, "val": 0} and report["stop"] == "\n\n"
    assert report["teacher_prompt"][1]["content"].startswith("Question: Mia has 12 marbles.")  # arith's demos


def test_a_users_task_file_over_a_named_reader(tmp_path):
    """A new benchmark in GSM8K's format: a task file naming the reader, its data relative to task.data_dir, the
    record ids under its own name, the reader's rationale for the `reference` teacher; task.spec overrides."""
    (tmp_path / "mine").mkdir()
    jsonl(tmp_path / "mine" / "train.jsonl", GSM8K_LINES[:2])
    jsonl(tmp_path / "mine" / "test.jsonl", GSM8K_LINES[2:])
    task = write(tmp_path / "my_gsm.yaml", """
        name: my_gsm
        data:
          reader: gsm8k
          train: mine/train.jsonl
          test: mine/test.jsonl
        answer_type: numeric
        generation:
          max_new_tokens: 64
        """)
    data = load_task(TaskConfig(file=str(task), data_dir=str(tmp_path)))
    first = data.train[0]
    assert (first.id, first.question, first.answer, data.max_new_tokens) == (
        "my_gsm-train-0", "Ann has 3 pens and buys 4 more. How many?", "7", 64)
    assert first.solution == GSM8K_LINES[0]["answer"]  # as the dataset writes it
    assert data.reference(first) == gold_rationale("gsm8k", first) == "3 + 4 = 7"
    assert [r.id for r in data.test] == ["my_gsm-test-0"]
    # No prompts key: the numeric type's demonstrations, as a built-in numeric task's.
    assert data.prompts.cot_messages(first) == load_task(TaskConfig(name="gsm8k", train_limit=1)).prompts.cot_messages(
        first)
    # Absolute paths need no data folder; an override changes the file's keys.
    abs_spec = {"data": {"train": str(tmp_path / "mine" / "train.jsonl"), "test": str(tmp_path / "mine" / "test.jsonl")}}
    assert len(load_task(TaskConfig(file=str(task), data_dir=str(tmp_path / "mine"), spec=abs_spec)).train) == 2


def test_named_reader_bad_input_is_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    jsonl(tmp_path / "d" / "train.jsonl", GSM8K_LINES[:1])
    base = "data:\n  reader: {reader}\n  train: d/train.jsonl\n  test: d/{test}\nanswer_type: numeric\n{extra}"

    def load(reader="gsm8k", test="train.jsonl", extra=""):
        (tmp_path / "t.yaml").write_text(base.format(reader=reader, test=test, extra=extra))
        return load_task(TaskConfig(file=str(tmp_path / "t.yaml"), data_dir=str(tmp_path)))

    with pytest.raises(TaskFileError, match=r"t\.yaml:2: data\.reader: unknown reader 'gsm9k'; did you mean 'gsm8k'"):
        load(reader="gsm9k")
    with pytest.raises(ValueError, match=r"t\.yaml:4: data\.test: no such file: .*d/nothere\.jsonl"):
        load(test="nothere.jsonl")
    assert [r.id for r in load().test] == ["t-test-0"]
    with pytest.raises(ConfigError, match=r"data\.reader gsm8k makes the records itself; remove `fields`"):
        load(extra="fields: {question: q, answer: a}\n")
    (tmp_path / "d" / "bad.jsonl").write_text(json.dumps(GSM8K_LINES[0]) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected a JSON object per line"):
        load(test="bad.jsonl")
    asdiv = "data:\n  reader: asdiv\n  source: a.xml\n  options: {folds: f, train_folds: [0]}\nanswer_type: numeric\n"
    (tmp_path / "t.yaml").write_text(asdiv)
    (tmp_path / "a.xml").write_text("<r/>")
    with pytest.raises(ValueError, match=r"t\.yaml:4: data\.options: data\.options\.test_folds: Field required"):
        load_task(TaskConfig(file=str(tmp_path / "t.yaml"), data_dir=str(tmp_path)))
