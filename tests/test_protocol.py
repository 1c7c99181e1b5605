"""The paper's protocol preset (configs/protocol/arith.yaml): round 1 already learns from the untuned student's
own mistakes, and the reflection loss's learning signal reaches the run's records.

One real run of 2 rounds, tiny: the SmolLM2 student's round-0 exam (4 samples per question at temperature 1.0), the
local solver teacher over HTTP, training on a local Ray, greedy evaluation, then round 2 on the exam of round 1's
student. Its questions come from a task file (issue 20) that the test writes: arith word problems over Parquet
(train) and CSV (test) under ids of their own, so the run also carries a task file through every stage of the loop.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rbyr_ray
from rbyr_ray.config import TaskConfig, load_config
from rbyr_ray.loop.summary import format_round_table
from rbyr_ray.student.models import load_tokenizer
from rbyr_ray.tasks import load_task, prompts

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs/protocol/arith.yaml"
TINY = ["rounds=2", "exam.max_new_tokens=24", "eval.max_new_tokens=24", "train.batch_size=4", "train.lora.r=4",
        "train.lora.alpha=8", "train.warmup_steps=1", "tracking.wandb=false"]


def fold(text: str) -> str:
    return prompts.fold_rationale(prompts.strip_answer_line(str(text)))


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> dict:
    """4 training and 4 test questions of one step, made by the arith generator with a seed of their own (not the
    built-in task's), written as a user's data: train.parquet and test.csv, ids "pq-*" and "csv-*", plain numeric
    answers, and a task file naming only data and fields (so the prompts are the defaults)."""
    made = load_task(TaskConfig(arith={"n_train": 4, "n_test": 4, "max_steps": 1, "seed": 4321}))
    folder = tmp_path_factory.mktemp("task")
    train = {"qid": [f"pq-{i}" for i in range(4)], "problem": [r.question for r in made.train],
             "result": [r.answer for r in made.train]}
    pq.write_table(pa.table(train), folder / "train.parquet")
    test = [(f"csv-{i}", r.question, r.answer) for i, r in enumerate(made.test)]
    with open(folder / "test.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("qid", "problem", "result"), *test])
    (folder / "arith_words.yaml").write_text(
        "data: {train: train.parquet, test: test.csv}\n"
        "fields: {question: problem, answer: result, id: qid}\n"
        "answer_type: numeric\n")
    return {"path": folder / "arith_words.yaml", "train": dict(zip(train["qid"], train["problem"])),
            "test": {qid: question for qid, question, _ in test}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ray_cluster, task_file) -> Path:
    path = tmp_path_factory.mktemp("protocol") / "run"
    rbyr_ray.run(load_config(PRESET, [*TINY, "task.name=null", f"task.file={task_file['path']}"]), run_dir=path)
    return path


def test_the_preset_is_the_papers_protocol():
    cfg = load_config(PRESET)
    assert cfg.exam.round0 and cfg.exam.samples == 4 and cfg.exam.temperature == 1.0 and cfg.exam.top_k == 50
    assert cfg.exam.limit is None  # every exam covers every training question
    assert cfg.train.reflection.weight == 0.5 and cfg.train.reflection.margin == 1.0


def test_round_1_has_triplets_exactly_for_the_untuned_students_mistakes(run_dir: Path):
    exam = pd.read_parquet(run_dir / "round_0/exam.parquet")
    assert exam["id"].nunique() == 4 and (exam.groupby("id").size() == 4).all()
    wrong = exam[~exam["correct"].astype(bool) & exam["error"].isna() & (exam["rationale"].str.strip() != "")]
    mistakes = {q: set(map(fold, g["rationale"])) for q, g in wrong.groupby("id")}
    teacher = pd.read_parquet(run_dir / "round_1/teacher.parquet")
    accepted = teacher[teacher["accepted"].astype(bool)]
    two_rationales = {q for q, g in accepted.groupby("id") if g["rationale"].map(fold).nunique() >= 2}
    items = pd.read_parquet(run_dir / "round_1/train_data.parquet")
    valid = items[items["valid"].astype(bool)]
    assert mistakes, "the untuned student made no mistake: nothing to test"
    assert set(valid["id"]) == set(mistakes) & two_rationales
    assert set(items[items["has_negative"].astype(bool)]["id"]) == set(mistakes)
    # Each negative is one of that question's own wrong rationales (as the student wrote it, folded).
    tokenizer = load_tokenizer(str(run_dir / "round_1/model"))
    for row in valid.itertuples():
        p = row.n_prefix
        assert tokenizer.decode(list(row.neg_ids[p:p + row.neg_n_rationale])) in mistakes[row.id]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["round_1/train_data"]["metrics"]["items_with_triplet"] == len(valid)


def test_the_learning_signal_reaches_metrics_summary_and_table(run_dir: Path):
    train = json.loads((run_dir / "manifest.json").read_text())["stages"]["round_1/train"]["metrics"]
    assert train["reflection_kind"] == "triplet" and train["reflection_items"] > 0
    assert -2.0 <= train["reflection_gap"] <= 2.0 and 0.0 <= train["reflection_active"] <= 1.0
    assert train["reflection_gap"] == pytest.approx(train["reflection_cos_ap"] - train["reflection_cos_an"], abs=1e-9)
    # margin 1.0: each item's hinge max(0, 1 - Δ_i) >= 1 - Δ_i, so over the same items the mean hinge (L_ref) is
    # >= 1 - mean Δ whatever the hinges do, with equality exactly when every hinge is active (Δ_i < 1 for all i).
    assert train["reflection_loss"] >= max(0.0, 1.0 - train["reflection_gap"]) - 1e-6, train
    if train["reflection_active"] == 1.0:
        assert train["reflection_loss"] == pytest.approx(1.0 - train["reflection_gap"], abs=1e-6)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(line for line in lines if line.get("stage") == "train")
    assert json.dumps(logged).count("reflection_gap") == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    round1 = next(r for r in summary["rounds"] if r["round"] == 1)
    assert round1["reflection_gap"] == train["reflection_gap"]
    assert round1["reflection_active"] == train["reflection_active"]
    table = format_round_table(summary)
    assert "ref_gap" in table.splitlines()[0] and f"{train['reflection_gap']:.3f}" in table
    assert (run_dir / "report.png").stat().st_size > 10_000


def test_every_stage_read_its_questions_from_the_task_file(run_dir: Path, task_file: dict):
    """The exams and evaluations hold exactly the file's ids, and the teacher was asked exactly the file's questions
    (which the built-in arith task, seeded differently, does not have)."""
    assert load_config(run_dir / "config.yaml").task.file == str(task_file["path"])
    for k in (0, 2):
        assert set(pd.read_parquet(run_dir / f"round_{k}/exam.parquet")["id"]) == set(task_file["train"])
    for k in (0, 1, 2):
        assert sorted(pd.read_parquet(run_dir / f"round_{k}/eval.parquet")["id"]) == sorted(task_file["test"])
    assert set(pd.read_parquet(run_dir / "round_1/teacher.parquet")["id"]) == set(task_file["train"])
    # Round 2's feedback is about the mistakes of round 1's student on the file's questions.
    exam = pd.read_parquet(run_dir / "round_2/exam.parquet")
    feedback = pd.read_parquet(run_dir / "round_2/teacher.parquet")
    assert len(feedback) and (feedback["kind"] == "feedback").all()
    assert set(feedback["id"]) <= set(exam.loc[~exam["correct"].astype(bool), "id"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    with sqlite3.connect(run_dir / "teacher_ledger.sqlite") as db:
        sent = [json.loads(r[0])["messages"][-1]["content"] for r in db.execute("select request_json from calls")]
    asked = {re.search(r"Question:\s*(.+)", text).group(1).strip() for text in sent}
    assert asked == set(task_file["train"].values())
    builtin = load_task(load_config(PRESET, ["task.arith.n_train=4", "task.arith.max_steps=1"]).task)
    assert not asked & {r.question for r in builtin.train}
