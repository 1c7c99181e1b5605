"""The main job in CI: `rbyr-ray run` as a user runs it, then `resume` and `report` of the finished run.

A subprocess with the real parts: the SmolLM2-135M student, the local solver teacher server over HTTP (started
and stopped by the run), a local Ray started by the run. Sized to about 3 minutes on 2 cores: 4 training
questions, the round-0 exam, 2 rounds, one epoch of 4-item batches per round, 4 test questions.

One run serves two purposes, so that `make test` pays for one (a run's start-ups cost more than its steps here):
- the demo's main job (configs/demo.yaml, its reflection loss and settings), resumed and reported;
- a researcher's own task (issue 20): arith word problems in a task file the test writes, Parquet (train) and CSV
  (test) under ids of their own, carried through every stage; with the paper protocol's round-0 exam (the demo has
  none), so round 1 already learns from the untuned student's own mistakes (test_protocol.py checks the preset).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OVERRIDES = [
    "name=ci", "rounds=2", "exam.round0=true", "exam.samples=2", "exam.limit=null", "exam.max_new_tokens=24",
    "exam.batch_size=16", "eval.max_new_tokens=24", "eval.batch_size=16", "train.batch_size=4", "train.epochs=1",
    "train.lora.r=4", "train.lora.alpha=8",
    # float32 weights on disk, so that round 2's LoRA delta on top of round 1's model is exactly low-rank.
    "student.dtype=float32", "tracking.wandb=true", "tracking.wandb_mode=offline",
]
STAGES = ["round_0/exam", "round_0/eval", "round_1/teacher", "round_1/train_data", "round_1/train", "round_1/eval",
          "round_2/exam", "round_2/teacher", "round_2/train_data", "round_2/train", "round_2/eval"]
N_TRAIN, N_TEST = 4, 4


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of the run's own
    env.update(RAY_AUTH_MODE="disabled", WANDB_MODE="offline", HF_HUB_OFFLINE="1",
               PATH=f"{BIN}:{env.get('PATH', '')}", **extra)
    return env


def _rbyr(*args: str, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BIN / "rbyr-ray"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert out.returncode == 0, f"rbyr-ray {args[0]} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> dict:
    """4 training and 4 test questions of one step, made by the arith generator with a seed of their own (not the
    built-in task's), written as a user's data: train.parquet and test.csv, ids "pq-*" and "csv-*", plain numeric
    answers, and a task file naming only data and fields (so the prompts are the defaults)."""
    from rbyr_ray.config import TaskConfig
    from rbyr_ray.tasks import load_task

    made = load_task(TaskConfig(arith={"n_train": N_TRAIN, "n_test": N_TEST, "max_steps": 1, "seed": 4321}))
    folder = tmp_path_factory.mktemp("task")
    train = {"qid": [f"pq-{i}" for i in range(N_TRAIN)], "problem": [r.question for r in made.train],
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
def job(tmp_path_factory, task_file) -> dict:
    """One `rbyr-ray run`, as a user types it; every teacher request that reaches the server is logged."""
    tmp = tmp_path_factory.mktemp("main_job")
    requests_log = tmp / "requests.jsonl"
    env = _env(RBYR_TEACHER_REQUEST_LOG=str(requests_log))
    run_dir = tmp / "run"
    out = _rbyr("run", str(REPO / "configs" / "demo.yaml"), *OVERRIDES, "task.name=null",
                f"task.file={task_file['path']}", "--run-dir", str(run_dir), env=env, cwd=tmp)
    return {"dir": run_dir, "env": env, "tmp": tmp, "requests_log": requests_log, "stdout": out.stdout,
            "stderr": out.stderr}


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _requests_sent(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_every_stage_of_both_rounds_is_recorded(job):
    run_dir = job["dir"]
    assert sorted(_manifest(run_dir)["stages"]) == sorted(STAGES)
    for name in ["config.yaml", "summary.json", "metrics.jsonl", "report.png", "teacher_ledger.sqlite"]:
        assert (run_dir / name).is_file(), name
    assert (run_dir / "report.png").stat().st_size > 10_000
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(STAGES)
    assert list((run_dir / "wandb").glob("offline-run-*")), "the offline wandb run is missing"
    # The training progress reaches the user's terminal, each line once (Ray Train tees a worker's print()).
    progress = re.findall(r"train step (\d+)/(\d+): lm_loss", job["stdout"] + job["stderr"])
    assert len([1 for step, total in progress if step == total]) == 2, progress  # each round's last step, once
    # Ray Train's PlacementGroupCleaner polling warnings are filtered in Ray's workers (rbyr_ray/ray_logs.py).
    assert "Failed to query" not in job["stdout"] + job["stderr"]
    # The resolved config holds no secret: the key is named by its variable only.
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["teacher"]["api_key_env"] == "OPENAI_API_KEY" and cfg["rounds"] == 2


def test_summary_has_every_round_field_with_sane_values(job):
    summary = json.loads((job["dir"] / "summary.json").read_text())
    rounds = {r["round"]: r for r in summary["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    assert 0.0 <= rounds[0]["test_accuracy"] <= 1.0 and summary["untuned_test_accuracy"] == rounds[0]["test_accuracy"]
    # Round k learns from the exam of round k-1's student (round 1: the untuned one's), its mistakes the negatives.
    for k in (1, 2):
        row = rounds[k]
        for key in ["test_accuracy", "exam_accuracy", "mistake_questions", "teacher_requests", "teacher_ledger_hits",
                    "teacher_accepted", "teacher_rejected", "lm_loss", "reflection_loss"]:
            assert row[key] is not None, (k, key)
        assert 0.0 <= row["test_accuracy"] <= 1.0 and 0.0 <= row["exam_accuracy"] <= 1.0
        assert row["teacher_requests"] > 0 and row["lm_loss"] > 0 and row["reflection_items"] > 0
    assert summary["final_test_accuracy"] == rounds[2]["test_accuracy"]
    # Every test question evaluated in every round.
    for k in (0, 1, 2):
        ev = pd.read_parquet(job["dir"] / f"round_{k}" / "eval.parquet")
        assert len(ev) == N_TEST and ev["error"].isna().all()
        assert rounds[k]["test_accuracy"] == pytest.approx(ev["correct"].mean())


def test_round_2_asks_the_teacher_about_exactly_its_exam_mistakes(job):
    from rbyr_ray.config import load_config
    from rbyr_ray.loop.rounds import read_mistakes
    from rbyr_ray.loop.rundir import RunDir
    from rbyr_ray.student.exam import mistake_mask
    from rbyr_ray.tasks import load_task
    from rbyr_ray.tasks.prompts import fold_rationale

    run_dir = job["dir"]
    cfg = load_config(run_dir / "config.yaml")
    exam = pd.read_parquet(run_dir / "round_2" / "exam.parquet")
    # The round's mistakes as the loop reads them (a wrong sample with a rationale to show), each one of that
    # question's own wrong samples in the exam.
    mistakes = read_mistakes(RunDir(run_dir), 2, cfg.train.reflection.max_negatives, cfg.exam.mistakes)
    wrong = exam[mistake_mask(exam, cfg.exam.mistakes) & exam["error"].isna()]
    wrong_ids = set(mistakes)
    assert wrong_ids, "the round-2 exam had no mistakes: nothing to check"
    for qid, texts in mistakes.items():
        assert set(texts) <= set(wrong.loc[wrong["id"] == qid, "rationale"]), qid
    teacher = pd.read_parquet(run_dir / "round_2" / "teacher.parquet")
    assert set(teacher["id"]) == wrong_ids and (teacher["kind"] == "feedback").all()
    summary = json.loads((run_dir / "summary.json").read_text())
    # The exam counts every question with a wrong sample, an empty one too (nothing to show the teacher).
    assert summary["rounds"][2]["mistake_questions"] == exam[mistake_mask(exam, cfg.exam.mistakes)]["id"].nunique()
    assert summary["rounds"][2]["mistake_questions"] >= len(wrong_ids)
    # What was sent (the ledger's stored requests): each feedback prompt shows one of that question's own wrong
    # rationales and the hint with its gold answer.
    by_question = {r.question: r for r in load_task(cfg.task, seed=cfg.seed).train}
    with sqlite3.connect(run_dir / "teacher_ledger.sqlite") as db:
        sent = [json.loads(r[0])["messages"][-1]["content"] for r in db.execute("select request_json from calls")]
    feedback = [text for text in sent if "Student's solution:" in text]
    assert len(feedback) == len(wrong_ids) == summary["rounds"][2]["teacher_requests"]
    asked = set()
    for text in feedback:
        question = re.search(r"Question:\s*(.+)", text).group(1).strip()
        record = by_question[question]
        asked.add(record.id)
        shown = re.search(r"Student's solution: (.*)\n", text).group(1)
        assert shown in {fold_rationale(w) for w in mistakes[record.id]}
        assert f"Hint: the correct answer is {record.answer}." in text
    assert asked == wrong_ids


def _q_proj(model_dir: Path | str, layer: int = 0) -> torch.Tensor:
    from safetensors.torch import load_file

    weights = {}
    for shard in Path(model_dir).glob("*.safetensors"):
        weights.update(load_file(shard))
    return weights[f"model.layers.{layer}.self_attn.q_proj.weight"].double()


def test_round_2_trained_from_round_1s_merged_model(job):
    """Round 2's LoRA (r=4) merged into round 1's model: their difference has rank 4. Against the untuned
    student the difference holds both rounds' deltas (rank 8): training from anywhere else shows up here."""
    from rbyr_ray.student.models import resolve_model_dir

    run_dir = job["dir"]
    manifest = _manifest(run_dir)["stages"]
    assert manifest["round_2/train"]["metrics"]["model_dir"] == str(run_dir / "round_2" / "model")
    w0 = _q_proj(resolve_model_dir("smollm2-135m", dtype="float32"))
    w1, w2 = _q_proj(run_dir / "round_1" / "model"), _q_proj(run_dir / "round_2" / "model")

    def singular(delta: torch.Tensor) -> torch.Tensor:
        s = torch.linalg.svdvals(delta)
        return s / s[0]

    from_round_1, from_untuned = singular(w2 - w1), singular(w2 - w0)
    assert from_round_1[3] > 1e-2 and from_round_1[4] < 1e-3, from_round_1[:6]  # rank 4: one LoRA
    assert from_untuned[4] > 1e-2, from_untuned[:9]  # more than one LoRA's rank


def test_resume_of_the_finished_run_runs_nothing_and_sends_nothing(job):
    run_dir, log = job["dir"], job["requests_log"]
    before_manifest, before_requests = _manifest(run_dir), _requests_sent(log)
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert before_requests > 0 and wandb_runs
    out = _rbyr("resume", str(run_dir), "--json", env=job["env"], cwd=job["tmp"])
    assert _manifest(run_dir) == before_manifest  # no stage ran again (wall times and finish times unchanged)
    assert _requests_sent(log) == before_requests  # no teacher request reached a server
    assert len(re.findall(r"done earlier .*skipped", out.stderr)) == len(STAGES)
    # Nothing to compute, so nothing to wait for: no Ray started (the run itself logged starting one), no wandb run.
    assert "started a local Ray cluster" in job["stderr"] and "started a local Ray cluster" not in out.stderr
    assert sorted((run_dir / "wandb").glob("offline-run-*")) == wandb_runs
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary == json.loads((run_dir / "summary.json").read_text())


def _copy_run(src: Path, dst: Path) -> Path:
    """A copy of the shared run dir that a test may change: model weights hard-linked (no test writes them), every
    other file copied, so that nothing done to the copy reaches the run the other tests read."""
    def copy(source: str, target: str) -> None:
        if source.endswith(".safetensors"):
            os.link(source, target)
        else:
            shutil.copy2(source, target)

    shutil.copytree(src, dst, copy_function=copy, ignore=shutil.ignore_patterns(".lock", "ray_train", "wandb"))
    return dst


def test_report_rebuilds_the_table_and_the_plot(job, tmp_path):
    run_dir = _copy_run(job["dir"], tmp_path / "run")
    (run_dir / "report.png").unlink()
    out = _rbyr("report", str(run_dir), env=job["env"], cwd=job["tmp"], timeout=180)
    assert (run_dir / "report.png").stat().st_size > 10_000
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["round", "test_acc"])
    table = [line.split() for line in lines[header + 1:header + 4]]
    assert [int(row[0]) for row in table] == [0, 1, 2]
    for row, want in zip(table, summary["rounds"]):
        assert float(row[1]) == pytest.approx(want["test_accuracy"], abs=5e-4)


def test_a_truncated_stage_file_is_named_and_its_stage_recomputed_on_request(job, tmp_path):
    """report and resume name a broken Parquet file of a finished run (one line, exit 2, the flag to use);
    `resume --recompute round_2/eval` computes that stage again and nothing else, sending no teacher request."""
    run_dir, log = _copy_run(job["dir"], tmp_path / "run"), job["requests_log"]
    before = pd.read_parquet(run_dir / "round_2" / "eval.parquet")
    broken = run_dir / "round_2" / "eval.parquet"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    flag = f"rbyr-ray resume {run_dir} --recompute round_2/eval"

    def refused(command: str) -> str:
        out = subprocess.run([str(BIN / "rbyr-ray"), command, str(run_dir)], env=job["env"], cwd=job["tmp"],
                             capture_output=True, text=True, timeout=180, check=False)
        assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
        lines = [line for line in out.stderr.splitlines() if line.startswith(f"rbyr-ray {command}: error:")]
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert f"{broken}: not a readable Parquet file" in lines[0] and flag in lines[0], lines[0]
        return out.stdout

    stages = _manifest(run_dir)["stages"]
    assert "test_acc" in refused("report")  # the table still printed (it reads the manifest), the file named
    assert (run_dir / "report.png").stat().st_size > 10_000
    refused("resume")
    assert _manifest(run_dir)["stages"] == stages  # refused before anything ran

    requests = _requests_sent(log)
    out = _rbyr("resume", str(run_dir), "--recompute", "round_2/eval", env=job["env"], cwd=job["tmp"])
    assert _requests_sent(log) == requests  # no teacher request
    assert len(re.findall(r"done earlier .*skipped", out.stderr)) == len(STAGES) - 1
    after = _manifest(run_dir)["stages"]
    assert sorted(after) == sorted(STAGES) and after["round_2/eval"] != stages["round_2/eval"]
    assert {key: after[key] for key in STAGES if key != "round_2/eval"} == \
        {key: stages[key] for key in STAGES if key != "round_2/eval"}
    again = pd.read_parquet(broken)
    assert sorted(again["id"]) == sorted(before["id"]) and again["error"].isna().all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"][2]["test_accuracy"] == pytest.approx(again["correct"].mean())


# ---- round 1 on the untuned student's own mistakes (the paper's protocol), and the task file through every stage


def _fold(text: str) -> str:
    from rbyr_ray.tasks import prompts

    return prompts.fold_rationale(prompts.strip_answer_line(str(text)))


def test_round_1_has_triplets_exactly_for_the_untuned_students_mistakes(job):
    from rbyr_ray.student.models import load_tokenizer

    run_dir = job["dir"]
    exam = pd.read_parquet(run_dir / "round_0/exam.parquet")
    assert exam["id"].nunique() == N_TRAIN and (exam.groupby("id").size() == 2).all()  # exam.samples=2
    wrong = exam[~exam["correct"].astype(bool) & exam["error"].isna() & (exam["rationale"].str.strip() != "")]
    mistakes = {q: set(map(_fold, g["rationale"])) for q, g in wrong.groupby("id")}
    teacher = pd.read_parquet(run_dir / "round_1/teacher.parquet")
    accepted = teacher[teacher["accepted"].astype(bool)]
    two_rationales = {q for q, g in accepted.groupby("id") if g["rationale"].map(_fold).nunique() >= 2}
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
    assert _manifest(run_dir)["stages"]["round_1/train_data"]["metrics"]["items_with_triplet"] == len(valid)


def test_the_learning_signal_reaches_metrics_summary_and_table(job):
    from rbyr_ray.loop.summary import format_round_table

    run_dir = job["dir"]
    train = _manifest(run_dir)["stages"]["round_1/train"]["metrics"]
    assert train["reflection_kind"] == "triplet" and train["reflection_items"] > 0
    assert -2.0 <= train["reflection_gap"] <= 2.0 and 0.0 <= train["reflection_active"] <= 1.0
    assert train["reflection_gap"] == pytest.approx(train["reflection_cos_ap"] - train["reflection_cos_an"], abs=1e-9)
    # margin 1.0 (the demo's): each item's hinge max(0, 1 - Δ_i) >= 1 - Δ_i, so over the same items the mean hinge
    # (L_ref) is >= 1 - mean Δ whatever the hinges do, with equality exactly when every hinge is active.
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


def test_every_stage_read_its_questions_from_the_task_file(job, task_file):
    """The exams and evaluations hold exactly the file's ids, and the teacher was asked exactly the file's questions
    (which the built-in arith task, seeded differently, does not have)."""
    from rbyr_ray.config import load_config
    from rbyr_ray.tasks import load_task

    run_dir = job["dir"]
    assert load_config(run_dir / "config.yaml").task.file == str(task_file["path"])
    for k in (0, 2):
        assert set(pd.read_parquet(run_dir / f"round_{k}/exam.parquet")["id"]) == set(task_file["train"])
    for k in (0, 1, 2):
        assert sorted(pd.read_parquet(run_dir / f"round_{k}/eval.parquet")["id"]) == sorted(task_file["test"])
    assert set(pd.read_parquet(run_dir / "round_1/teacher.parquet")["id"]) == set(task_file["train"])
    with sqlite3.connect(run_dir / "teacher_ledger.sqlite") as db:
        sent = [json.loads(r[0])["messages"][-1]["content"] for r in db.execute("select request_json from calls")]
    asked = {re.search(r"Question:\s*(.+)", text).group(1).strip() for text in sent}
    assert asked == set(task_file["train"].values())
    builtin = load_task(load_config(REPO / "configs/demo.yaml", ["task.arith.n_train=4", "task.arith.max_steps=1"]).task)
    assert not asked & {r.question for r in builtin.train}
