"""The round loop end to end, with real parts: the SmolLM2 student, the local teacher server over HTTP, Ray.

One run is submitted as a Ray job to a cluster started with `ray start --head` (the README's cluster path);
a second run with the same config is SIGKILLed during its teacher stage and again during training, then
interrupted with Ctrl-C during training, resumed each time, and must end with the same teacher data and without paying for a teacher request twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

# Two full runs (a Ray job, and one killed twice and resumed): several minutes on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = [
    "name=tiny", "rounds=2", "task.arith.n_train=10", "task.arith.n_test=8", "task.arith.max_steps=2",
    "exam.round0=true", "exam.samples=2", "exam.max_new_tokens=24", "exam.batch_size=20", "exam.cpus_per_replica=1",
    "eval.max_new_tokens=24", "eval.batch_size=20", "train.batch_size=4", "train.lora.r=4", "train.lora.alpha=8",
    "train.epochs=1", "tracking.wandb=true", "tracking.wandb_mode=offline",
]
STAGES = ["round_0/exam", "round_0/eval", "round_1/teacher", "round_1/train_data", "round_1/train", "round_1/eval",
          "round_2/exam", "round_2/teacher", "round_2/train_data", "round_2/train", "round_2/eval"]


def _env(**extra: str) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", WANDB_MODE="offline", HF_HUB_OFFLINE="1",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}", RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_run(tmp_path_factory) -> Path:
    """`ray job submit --working-dir . -- rbyr-ray run configs/demo.yaml ...` against `ray start --head`."""
    run_dir = tmp_path_factory.mktemp("job") / "run"
    port, dash = _free_port(), _free_port()
    temp = tmp_path_factory.mktemp("ray")
    # Every port free-picked: another Ray on this machine (a test's, a user's) must not collide with this head.
    ports = [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "node-manager-port", "object-manager-port", "ray-client-server-port")]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", *ports,
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}"],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 90
        while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=_env(), check=False,
                             capture_output=True).returncode != 0:
            assert head.poll() is None and time.time() < deadline, "ray start --head did not come up"
            time.sleep(2)
        for _ in range(30):  # the dashboard answers before its job agent is ready
            job = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
                 "rbyr-ray", "run", "configs/demo.yaml", *TINY, "--run-dir", str(run_dir)],
                env=_env(), capture_output=True, text=True, timeout=900, check=False)
            if "No available agent" not in job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in (job.stdout + job.stderr).lower()
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head and everything it started, nothing else on the machine
        head.wait(timeout=60)
    return run_dir


def test_job_writes_a_complete_run_dir(job_run: Path):
    for name in ["config.yaml", "summary.json", "metrics.jsonl", "manifest.json", "report.png",
                 "teacher_ledger.sqlite"]:
        assert (job_run / name).is_file(), name
    for k in (1, 2):
        for name in ["teacher.parquet", "train_data.parquet", "eval.parquet"]:
            assert (job_run / f"round_{k}" / name).is_file(), (k, name)
        assert (job_run / f"round_{k}" / "model" / "config.json").is_file()
    assert (job_run / "round_2" / "exam.parquet").is_file() and (job_run / "round_0" / "exam.parquet").is_file()
    manifest = json.loads((job_run / "manifest.json").read_text())
    assert sorted(manifest["stages"]) == sorted(STAGES)
    assert len((job_run / "metrics.jsonl").read_text().splitlines()) == len(STAGES)
    assert list((job_run / "wandb").glob("offline-run-*")), "the offline wandb run is missing"


def test_summary_has_every_round_field(job_run: Path):
    summary = json.loads((job_run / "summary.json").read_text())
    rounds = {r["round"]: r for r in summary["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    assert 0.0 <= rounds[0]["test_accuracy"] <= 1.0 and summary["untuned_test_accuracy"] == rounds[0]["test_accuracy"]
    teacher1 = pd.read_parquet(job_run / "round_1" / "teacher.parquet")
    for k in (1, 2):
        row = rounds[k]
        for key in ["test_accuracy", "exam_accuracy", "mistake_questions", "teacher_requests", "teacher_ledger_hits",
                    "teacher_accepted", "teacher_rejected", "lm_loss", "reflection_loss"]:
            assert row[key] is not None, (k, key)
        assert set(row["wall_s"]) == {"teacher", "train_data", "train", "eval"} | ({"exam"} if k == 2 else set())
        assert row["lm_loss"] > 0
    # Round 1 asks the teacher about every training question (2 samples each); round 2 only the mistakes.
    assert teacher1["id"].nunique() == 10 and len(teacher1) == 20
    assert rounds[1]["teacher_accepted"] == int(teacher1["accepted"].sum())
    exam2 = pd.read_parquet(job_run / "round_2" / "exam.parquet")
    wrong_ids = set(exam2.loc[~exam2["correct"], "id"])
    teacher2 = pd.read_parquet(job_run / "round_2" / "teacher.parquet")
    assert set(teacher2["id"]) == wrong_ids and rounds[2]["mistake_questions"] == len(wrong_ids)
    # The resolved config is in the run dir, without secrets (keys are named by variable only).
    cfg = yaml.safe_load((job_run / "config.yaml").read_text())
    assert cfg["teacher"]["api_key_env"] == "OPENAI_API_KEY" and cfg["rounds"] == 2


def test_report_rebuilds_table_and_weak_spots(job_run: Path, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(job_run, copy, ignore=shutil.ignore_patterns("model", "ray_train", "wandb"))
    (copy / "report.png").unlink()
    out = subprocess.run([str(BIN / "rbyr-ray"), "report", str(copy)], env=_env(), capture_output=True, text=True, check=False,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (copy / "report.png").stat().st_size > 10_000
    weak = pd.read_csv(copy / "weak_spots.csv")
    assert {"steps", "ops"} <= set(weak["tag"]) and set(weak["round"]) == {0, 1, 2}
    # per-tag accuracies recompute from eval.parquet
    ev = pd.read_parquet(copy / "round_1" / "eval.parquet")
    overall = weak[(weak["round"] == 1) & (weak["tag"] == "steps")]
    assert (overall["n"] * overall["accuracy"]).sum() == pytest.approx(ev["correct"].sum())
    assert "weak spots" in out.stdout and "round" in out.stdout


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _stage_done(run_dir: Path, stage: str) -> bool:
    path = run_dir / "manifest.json"
    return path.exists() and stage in json.loads(path.read_text())["stages"]


def _ledger_calls(run_dir: Path) -> int:
    import sqlite3

    path = run_dir / "teacher_ledger.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as db:
            return db.execute("select count(*) from calls").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_during_teacher_and_training_then_resume(job_run: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    requests_log = tmp_path / "requests.jsonl"
    # Slow teacher (one request in flight, 1 s each) so the kill lands mid-stage.
    # One round is enough to cover a kill in both the teacher stage and training.
    slow = ["teacher.latency_ms=1000", "teacher.concurrency=1", "rounds=1", "train.checkpoint_every_steps=1"]
    env = _env(RBYR_TEACHER_REQUEST_LOG=str(requests_log))
    cmd = [str(BIN / "rbyr-ray"), "run", str(REPO / "configs/demo.yaml"), *TINY, *slow, "--run-dir", str(run_dir)]

    run = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    _wait_for(lambda: _ledger_calls(run_dir) >= 3, run, 600, "the round-1 teacher stage")
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not _stage_done(run_dir, "round_1/teacher")
    paid_before = _ledger_calls(run_dir)

    run = subprocess.Popen([str(BIN / "rbyr-ray"), "resume", str(run_dir)], env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for(lambda: list((run_dir / "round_1" / "ray_train").rglob("checkpoint_*")), run, 600,
              "the first training checkpoint")
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not _stage_done(run_dir, "round_1/train")

    # Ctrl-C (SIGINT to the process group, as a terminal sends it) during training: the run stops within
    # seconds with exit code 130 and says so, the stage unrecorded. (Ray Train's own SIGINT handler, alone,
    # made it exit 1 without a word.)
    checkpoints = lambda: set((run_dir / "round_1" / "ray_train").rglob("checkpoint_*"))
    before = checkpoints()
    with open(tmp_path / "ctrl_c.log", "w") as log:
        run = subprocess.Popen([str(BIN / "rbyr-ray"), "resume", str(run_dir)], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        _wait_for(lambda: checkpoints() - before, run, 600, "a checkpoint of the resumed training")
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=120) == 130
    assert "stopped by SIGINT; completed work is kept; `rbyr-ray resume" in (tmp_path / "ctrl_c.log").read_text()
    assert not _stage_done(run_dir, "round_1/train")

    done = subprocess.run([str(BIN / "rbyr-ray"), "resume", str(run_dir), "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert sorted(manifest["stages"]) == sorted(s for s in STAGES if not s.startswith("round_2"))

    # Same teacher data as the uninterrupted run (the job above ran the same config).
    for k in (1,):
        cols = ["id", "sample", "rationale", "accepted"]
        got = pd.read_parquet(run_dir / f"round_{k}" / "teacher.parquet")[cols].sort_values(["id", "sample"])
        want = pd.read_parquet(job_run / f"round_{k}" / "teacher.parquet")[cols].sort_values(["id", "sample"])
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    # No teacher request paid twice: requests answered before the kill were served from the ledger after it;
    # only the one in flight at the kill (teacher.concurrency=1) may have been sent again.
    sent = [json.loads(line)["hash"] for line in requests_log.read_text().splitlines()]
    repeats = len(sent) - len(set(sent))
    assert repeats <= 1, f"{repeats} teacher requests were sent twice"
    assert paid_before >= 3 and _ledger_calls(run_dir) == len(set(sent))
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rounds"][1]["teacher_ledger_hits"] >= paid_before * 2  # 2 samples per paid request
