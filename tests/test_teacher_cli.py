"""`rbyr-ray teacher annotate` and the run's teacher stage as a user meets them: where the API key goes (and where it
never goes), and what happens when not a single rationale can be obtained.

Real parts: the CLI in a subprocess, the local teacher server over HTTP (requiring a bearer key where a test says
so), a refused port, and a real local Ray: the session's, which the subprocesses join through $RAY_ADDRESS as a
user's job joins a running cluster (starting a Ray of its own costs each ~5 s on 2 cores), except the one given the
key: it starts its own, as on a laptop, so that its Ray workers (the teacher's actors, which read the key) see the
environment it was given.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rbyr_ray.config import TaskConfig
from rbyr_ray.teacher.server import LocalTeacherServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
TASK = TaskConfig(arith={"n_train": 20, "n_test": 4})
KEY_ENV = "RBYR_TEST_TEACHER_KEY"
# Looks like a real key; built here so that no key-shaped string sits in the repository.
KEY = "sk-" + "rbyrtest" + "7Q2x9LmN4pV8cZ1w"


@pytest.fixture(scope="module")
def ray_address(ray_cluster) -> str:
    """The address of the session's local Ray (conftest.ray_cluster), for the subprocesses to join."""
    return ray_cluster.get_runtime_context().gcs_address


def _env(ray_address: str | None, **extra: str) -> dict:
    """The subprocess's environment: joining the Ray at `ray_address`, or (None) starting a local one of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", KEY_ENV)}
    env.update(RAY_AUTH_MODE="disabled", WANDB_MODE="offline", HF_HUB_OFFLINE="1", **extra)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return env


def _annotate(url: str, tmp: Path, *overrides: str, env: dict, limit: int = 6,
              split: str = "train") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rbyr_ray.cli", "teacher", "annotate", "--task", "arith", "--limit", str(limit),
           "--split", split, "--samples", "2", "--base-url", url, "--ledger", str(tmp / "ledger.sqlite"), "--out",
           str(tmp / "teacher.parquet"), "--json", "task.arith.n_train=20", "task.arith.n_test=4",
           "teacher.max_retries=1", "teacher.retry_backoff_s=0.01", "ray.num_cpus=2", *overrides]
    return subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=300, check=False)


def _refused_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def _one_line_failure(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    lines = [line for line in out.stderr.splitlines() if line.startswith("rbyr-ray teacher: failed:")]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> dict:
    """One annotate of 6 questions against a server that wants the key, the key in the named variable, on a Ray of
    its own (a joined cluster's workers have that cluster's environment, not this one's). Its ledger is also the
    spent-budget test's paid-for answers (a ledger is keyed by requests, not by endpoint or key)."""
    tmp = tmp_path_factory.mktemp("keyed")
    log = tmp / "server.log"
    server = LocalTeacherServer("solver", TASK, api_key=KEY, log_path=log)
    with server as url:
        out = _annotate(url, tmp, f"teacher.api_key_env={KEY_ENV}", env=_env(None, **{KEY_ENV: KEY}))
        stats = server.stats()
    assert out.returncode == 0, out.stderr[-3000:]
    return {"dir": tmp, "out": out, "stats": stats, "log": log,
            "summary": json.loads(out.stdout.strip().splitlines()[-1])}


def test_the_key_from_the_environment_reaches_the_server_and_nothing_else(keyed):
    tmp_path, out, log = keyed["dir"], keyed["out"], keyed["log"]
    assert keyed["summary"]["accepted"] == 12 and keyed["summary"]["failed"] == 0
    # The server answers only `Authorization: Bearer <KEY>`: every request carried it.
    stats = keyed["stats"]
    assert stats["unauthorized"] == 0 and stats["completions"] == stats["requests"] == 6, stats
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        stored = [r[0] for r in db.execute("select request_json from calls")]
    assert len(stored) == 6 and all("Question:" in r for r in stored)
    # ...and it is nowhere on disk or in what the run printed: not in the ledger's stored requests (read as raw
    # bytes, every table), not in teacher.parquet, not in the logs.
    for path in [tmp_path / "ledger.sqlite", tmp_path / "teacher.parquet"]:
        assert path.stat().st_size > 0 and KEY.encode() not in path.read_bytes(), path
    for name in os.listdir(tmp_path):  # sqlite's -wal/-shm files too
        assert KEY.encode() not in (tmp_path / name).read_bytes(), name
    assert KEY not in out.stdout + out.stderr + log.read_text()


def test_an_endpoint_that_wants_a_key_that_is_not_set_says_which_variable_to_set(tmp_path, ray_address):
    with LocalTeacherServer("solver", TASK, api_key=KEY) as url:
        out = _annotate(url, tmp_path, f"teacher.api_key_env={KEY_ENV}", env=_env(ray_address))
    assert f"joining Ray cluster at {ray_address}" in out.stderr  # the session's Ray, not one of its own
    line = _one_line_failure(out)
    assert "http 401" in line and f"${KEY_ENV} is not set: export it" in line
    # What it has is written: every sample, each with its error.
    rows = pd.read_parquet(tmp_path / "teacher.parquet")
    assert len(rows) == 12 and rows["error"].str.startswith("http 401").all() and not rows["accepted"].any()


def test_a_key_the_driver_has_but_a_joined_clusters_workers_lack_is_named_where_it_is_missing(tmp_path, ray_address):
    """On a cluster the key is read where the request is sent: a teacher worker of the joined cluster, whose
    environment is its node's, not the driver's shell. The failure says so instead of "the endpoint refused the key"."""
    with LocalTeacherServer("solver", TASK, api_key=KEY) as url:
        out = _annotate(url, tmp_path, f"teacher.api_key_env={KEY_ENV}", env=_env(ray_address, **{KEY_ENV: KEY}))
    line = _one_line_failure(out)
    assert "http 401" in line and f"${KEY_ENV} is not set on " in line and "runtime_env" in line, line
    assert "refused the key" not in line
    assert KEY not in out.stdout + out.stderr


def test_a_spent_budget_fails_and_keeps_what_was_paid_for(tmp_path, ray_address, keyed):
    # The keyed annotate paid for 6 questions, and spent this budget on them.
    for paid in keyed["dir"].glob("ledger.sqlite*"):
        shutil.copy(paid, tmp_path / paid.name)
    spent = keyed["summary"]["tokens"]
    with LocalTeacherServer("solver", TASK) as url:
        out = _annotate(url, tmp_path, f"teacher.budget_tokens={spent}", env=_env(ray_address), limit=12)
    # The 6 questions already paid for come from the ledger, so something was obtained: not a failure.
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["accepted"] == 12 and summary["failed"] == 12 and summary["budget_exhausted"]
    # A budget spent before any of the asked questions was: a failure, and it says so.
    out = _annotate(url, tmp_path, f"teacher.budget_tokens={spent}", env=_env(ray_address), limit=4, split="test")
    assert "teacher budget reached" in _one_line_failure(out)


def test_the_runs_teacher_stage_fails_instead_of_training_on_nothing(tmp_path, ray_address):
    """A refused connection (a loopback port nobody listens on; the key variable unset, which a loopback endpoint
    allows): the run fails in one line that gives the reason, keeps what it computed, trains on nothing."""
    run_dir = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "rbyr-ray"), "run", str(REPO / "configs" / "demo.yaml"),
           "rounds=1", "task.arith.n_train=4", "task.arith.n_test=2", "exam.round0=false", "eval.max_new_tokens=8",
           "teacher.backend=openai", f"teacher.base_url={_refused_url()}", "teacher.max_retries=0",
           "tracking.wandb=false", "--run-dir", str(run_dir)]
    env = {k: v for k, v in _env(ray_address).items() if k != "OPENAI_API_KEY"}  # teacher.api_key_env's default
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400, check=False)
    assert out.returncode == 1, out.stderr[-3000:]
    line = [x for x in out.stderr.splitlines() if x.startswith("rbyr-ray run: failed:")]
    assert len(line) == 1 and "no rationale obtained for any of 4 questions" in line[0], out.stderr[-3000:]
    assert "connection error" in line[0] and "($OPENAI_API_KEY is not set)" in line[0], line[0]
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert sorted(stages) == ["round_0/eval"]  # kept; the teacher stage is not recorded, nothing was trained
    # What it has is written: every sample, each with its error.
    rows = pd.read_parquet(run_dir / "round_1" / "teacher.parquet")
    assert len(rows) == 8 and rows["error"].notna().all() and not rows["accepted"].any()
    assert not (run_dir / "round_1" / "model").exists()
