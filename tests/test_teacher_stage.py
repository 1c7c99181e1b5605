"""The teacher stage as a Ray Data pipeline against a faulty local server: nothing lost, nothing sent twice,
a rerun sends nothing, a killed run resumes with only the missing requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from rbyr_ray.config import TaskConfig, TeacherConfig
from rbyr_ray.tasks import check_steps, load_task
from rbyr_ray.teacher.backends import SolverBackend
from rbyr_ray.teacher.ledger import Ledger
from rbyr_ray.teacher.server import LocalTeacherServer
from rbyr_ray.teacher.stage import annotate

pytestmark = pytest.mark.slow
TASK = TaskConfig(arith={"n_train": 60, "n_test": 10})
RECORDS = load_task(TASK).train
FAST_RETRY = {"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05}


@pytest.fixture(scope="module")
def ray_cluster(ray_cluster):
    """The shared local Ray (conftest.py), with Ray Data's progress bars off for readable test logs."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    return ray_cluster


def test_faulty_server_nothing_lost_nothing_duplicated_and_rerun_is_free(ray_cluster, tmp_path):
    faults = TeacherConfig(error_rate=0.2, rate_limit_rate=0.2, garbage_rate=0.1, latency_ms=5)
    # 40% of requests fail: 8 retries make a final failure rare (0.4**9 per request), not impossible.
    cfg = TeacherConfig(samples=2, concurrency=8, max_retries=8, reask=1, **FAST_RETRY)
    records = RECORDS[:40]
    ledger_path = tmp_path / "ledger.sqlite"
    with LocalTeacherServer("solver", TASK, faults, seed=11) as url:
        server = _server_handle(url)
        result = annotate(records, cfg, answer_type="numeric", base_url=url, ledger_path=ledger_path,
                          out_path=tmp_path / "round1")
        rows = pd.read_parquet(tmp_path / "round1" / "teacher.parquet")
        assert set(rows.columns) >= {"id", "sample", "rationale", "predicted", "accepted", "error", "cached", "kind"}
        assert len(rows) == len(result.rows) and result.questions == 40
        # Every question ends with accepted rationales or a recorded final failure: none is lost.
        for record in records:
            mine = rows[rows["id"] == record.id]
            assert mine["accepted"].any() or mine["error"].notna().any(), record.id
        assert (rows["accepted"] & (rows["predicted"] != rows["id"].map({r.id: r.answer for r in records}))).sum() == 0
        garbage = rows[rows["text"].notna() & rows["predicted"].isna()]
        assert len(garbage) > 0 and not garbage["accepted"].any()  # the quality gate rejected the noise
        assert result.accepted + result.rejected + result.failed == len(rows)
        assert result.accepted >= 60 and result.requests_sent > 40  # retries happened
        # No request is duplicated: one ledger sample per (request, index), and the server answered each once.
        with Ledger(ledger_path) as ledger:
            counts = ledger.counts()
            assert ledger.duplicate_calls() == 0 and counts["claims"] == 0
        stats = server()
        assert stats["choices"] == counts["samples"] == result.accepted + result.rejected
        assert stats["requests"] == result.requests_sent  # every POST counted by both sides

        again = annotate(records, cfg, answer_type="numeric", base_url=url, ledger_path=ledger_path,
                         out_path=tmp_path / "rerun.parquet")
        assert server()["requests"] == stats["requests"] + again.requests_sent
        failed_before = set(rows.loc[rows["error"].notna(), "id"])
        if not failed_before:
            assert again.requests_sent == 0 and again.ledger_hits == counts["samples"]  # 0 HTTP requests
        else:  # a final failure is not paid work: the rerun asks again for those questions, and only those
            sent_for = set(again.rows.loc[again.rows["http_requests"] > 0, "id"])
            assert sent_for <= failed_before
        assert again.accepted >= result.accepted


def test_steps_gate_catches_every_false_step_under_faults_nothing_lost_or_duplicated(ray_cluster, tmp_path):
    """The 20% 500s / 20% 429s / 10% garbage mix, plus 20% of answers that are right only after a false step:
    the steps gate (the default for a numeric task) rejects each of those, the server's own count of them,
    accepts exactly the solver's correct rationales, and re-asks questions whose rationales were all rejected."""
    faults = TeacherConfig(error_rate=0.2, rate_limit_rate=0.2, garbage_rate=0.1, false_step_rate=0.2, latency_ms=5)
    cfg = TeacherConfig(samples=2, concurrency=8, max_retries=8, reask=1, **FAST_RETRY)
    records = RECORDS[:30]
    ledger_path = tmp_path / "ledger.sqlite"
    with LocalTeacherServer("solver", TASK, faults, seed=23) as url:
        result = annotate(records, cfg, answer_type="numeric", base_url=url, ledger_path=ledger_path,
                          out_path=tmp_path)
        stats = _server_handle(url)()
    rows = pd.read_parquet(tmp_path / "teacher.parquet")
    assert result.gate == "steps" and not rows.duplicated(["id", "sample"]).any()
    obtained = rows[rows["text"].notna()]
    reasons = obtained["reject_reason"].fillna("")
    caught = obtained[reasons.str.startswith("false_step: ")]
    assert stats["false_steps"] >= 5 and len(caught) == result.rejected_steps == stats["false_steps"]
    assert (caught["predicted"] == caught["id"].map({r.id: r.answer for r in records})).all()
    for reason in caught["reject_reason"]:  # each names its one false step, and that step is false
        step = reason.removeprefix("false_step: ")
        assert check_steps(step).false_steps == [step]
    assert (reasons == "unparseable").sum() == stats["garbage"] == result.rejected_answer
    # Accepted exactly when the text is one of the solver's correct rationales: no false accept, no false reject.
    solver = SolverBackend()
    correct = {r.id: {solver.answer([{"role": "user", "content": f"Question: {r.question}"}], v) for v in range(6)}
               for r in records}
    assert (obtained["accepted"] == [t in correct[i] for i, t in zip(obtained["id"], obtained["text"])]).all()
    # Nothing lost: a question ends accepted, with a recorded failure, or with every re-ask rejected.
    for record in records:
        mine = rows[rows["id"] == record.id]
        first = mine[mine["attempt"] == 0]
        if first["text"].notna().all() and not first["accepted"].any():
            assert (mine["attempt"] == 1).sum() == cfg.samples, record.id  # all rejected: asked again
        assert (mine["accepted"].any() or mine["error"].notna().any()
                or (len(mine) == cfg.samples * (cfg.reask + 1) and mine["reject_reason"].notna().all())), record.id
    assert result.accepted + result.rejected + result.failed == len(rows)
    with Ledger(ledger_path) as ledger:
        assert ledger.duplicate_calls() == 0
        assert stats["choices"] == ledger.counts()["samples"] == result.accepted + result.rejected
    assert stats["requests"] == result.requests_sent


def test_killed_run_resumes_with_only_the_missing_requests(ray_cluster, tmp_path):
    """`rbyr-ray teacher annotate` is killed (SIGKILL) mid-stage; the rerun sends only what is missing.

    The kill point is fixed, not raced: the first server answers 4 requests and holds every later one
    (`--hold-after 4`) for good, so at the kill exactly 4 calls are in the ledger and the client's 2 others are
    in flight, and the killed run's actors (alive until Ray reaps them) can record nothing more. The rerun asks a
    second server of the same teacher (the ledger keys requests by content, not by URL).
    """
    n_questions, answered = 30, 4
    ledger_path = tmp_path / "ledger.sqlite"
    args = ["--limit", str(n_questions), "--samples", "2", "--ledger", str(ledger_path), "--json",
            "teacher.concurrency=2", "task.arith.n_train=60", "task.arith.n_test=10"]
    annotate_cmd = [sys.executable, "-m", "rbyr_ray.cli", "teacher", "annotate", "--task", "arith", *args]
    # Join this test's Ray cluster: the killed driver's actors die with it, and no second cluster starts.
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}

    def calls() -> int:
        if not ledger_path.exists():
            return 0
        with Ledger(ledger_path) as ledger:
            return ledger.counts()["calls"]

    with LocalTeacherServer("solver", TASK, seed=5, extra_args=["--hold-after", str(answered)]) as holding_url:
        holding = _server_handle(holding_url)
        proc = subprocess.Popen([*annotate_cmd, "--base-url", holding_url], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 300
        while not (calls() == answered and holding()["held"] == 2):  # 2 = teacher.concurrency
            assert proc.poll() is None, "the annotate run ended before the hold point"
            assert time.monotonic() < deadline, f"no hold point: {calls()} calls, {holding()}"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

        with LocalTeacherServer("solver", TASK, seed=5) as url:
            server = _server_handle(url)
            # The rerun is the same command run to the end; its --json summary is the last line of stdout.
            out = subprocess.run([*annotate_cmd, "--base-url", url, "--out", str(tmp_path / "teacher.parquet")],
                                 env=env, capture_output=True, text=True, timeout=180, check=True)
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            assert summary["questions"] == n_questions and summary["failed"] == summary["rejected"] == 0
            assert summary["requests_sent"] == n_questions - answered  # only the missing ones
            assert summary["ledger_hits"] == 2 * answered and summary["accepted"] == 2 * n_questions
            assert server()["completions"] == n_questions - answered
        assert len(pd.read_parquet(tmp_path / "teacher.parquet")) == 2 * n_questions
        with Ledger(ledger_path) as ledger:
            assert ledger.counts()["calls"] == n_questions and ledger.duplicate_calls() == 0
        # Paid for and lost: exactly the requests in flight at the kill (held, here, never answered).
        assert holding()["completions"] == answered and holding()["held"] == 2


def test_feedback_talk_and_truncation_are_rejected_by_reason_end_to_end(ray_cluster, tmp_path):
    """Through the real server (injecting right answers that talk about the student, half of them inside a step,
    and answers cut off with finish_reason "length") and the real stage: a removable sentence is cleaned and the
    rationale accepted, a reference inside a step is rejected as `refers_to_feedback`, a cut-off answer as
    `truncated`, each counted beside the other reasons; the ledger keeps the finish reason for a rerun, and an
    entry recorded without one (before finish reasons were kept) reads as finished."""
    import sqlite3

    from rbyr_ray.tasks.grading import extract_teacher_answer

    records = RECORDS[:20]
    mistakes = {r.id: ["1 + 1 = 2.\nAnswer: 2"] for r in records}
    cfg = TeacherConfig(samples=2, concurrency=8, **FAST_RETRY)
    ledger_path = tmp_path / "ledger.sqlite"
    faults = ["--feedback-talk-rate", "0.5", "--truncate-rate", "0.25"]
    with LocalTeacherServer("solver", TASK, seed=3, extra_args=faults) as url:
        result = annotate(records, cfg, answer_type="numeric", base_url=url, ledger_path=ledger_path,
                          out_path=tmp_path, mistakes=mistakes)
        stats = _server_handle(url)()
        rows = pd.read_parquet(tmp_path / "teacher.parquet")
        assert (rows["kind"] == "feedback").all() and len(rows) == 40 and result.failed == 0
        assert stats["feedback_talk"] >= 3 and stats["feedback_talk_in_step"] >= 3 and stats["truncated"] >= 3
        assert result.rejected_feedback == stats["feedback_talk_in_step"]
        assert result.rejected_truncated == stats["truncated"] == (rows["finish_reason"] == "length").sum()
        assert result.rejected_answer == result.rejected_steps == 0
        assert result.accepted == 40 - stats["feedback_talk_in_step"] - stats["truncated"]
        assert (rows.loc[rows["finish_reason"] != "length", "finish_reason"] == "stop").all()
        # The cleaned ones: accepted, with exactly the rationale of the same answer without the talk.
        talked = rows[rows["text"].str.startswith("The student's solution is wrong")]
        assert len(talked) == stats["feedback_talk"] and talked["accepted"].all()
        for text, rationale in zip(talked["text"], talked["rationale"]):
            assert rationale == extract_teacher_answer("numeric", text.split("\n", 1)[1]).rationale
        assert not rows.loc[rows["accepted"], "rationale"].str.contains("student").any()
        in_step = rows[rows["reject_reason"] == "refers_to_feedback"]
        assert in_step["text"].str.startswith("Unlike the student's solution, ").all()

        again = annotate(records, cfg, answer_type="numeric", base_url=url, ledger_path=ledger_path, out_path=None,
                         mistakes=mistakes)
        assert again.requests_sent == 0 and again.ledger_hits == 40
        assert (again.rejected_truncated, again.rejected_feedback, again.accepted) == \
            (result.rejected_truncated, result.rejected_feedback, result.accepted)
    with sqlite3.connect(ledger_path) as db:  # as a ledger written before finish reasons were stored
        db.execute("UPDATE samples SET finish_reason = NULL")
    old = annotate(records, cfg, answer_type="numeric", base_url="http://127.0.0.1:9/v1", ledger_path=ledger_path,
                   out_path=None, mistakes=mistakes)
    assert old.requests_sent == 0 and old.rejected_truncated == 0 and old.rows["finish_reason"].isna().all()


def test_a_keyless_loopback_endpoint_gets_no_key_and_a_remote_one_needs_it(ray_cluster, tmp_path, monkeypatch,
                                                                            caplog):
    import logging

    monkeypatch.delenv("RBYR_TEST_UNSET_KEY", raising=False)
    cfg = TeacherConfig(backend="openai", api_key_env="RBYR_TEST_UNSET_KEY", samples=1, **FAST_RETRY)
    with LocalTeacherServer("solver", TASK) as url:
        with caplog.at_level(logging.INFO, logger="rbyr_ray.teacher.stage"):
            result = annotate(RECORDS[:4], cfg, answer_type="numeric", base_url=url,
                              ledger_path=tmp_path / "ledger.sqlite", out_path=None)
        stats = _server_handle(url)()
    assert result.accepted == 4 and stats["requests"] == 4 and stats["keyed"] == 0  # no Authorization header
    said = [r.getMessage() for r in caplog.records if "without an API key" in r.getMessage()]
    assert len(said) == 1 and "$RBYR_TEST_UNSET_KEY is not set" in said[0] and url in said[0]
    # Anywhere else the missing key is an error before any request (nothing would answer at this address).
    with pytest.raises(ValueError, match=r"\$RBYR_TEST_UNSET_KEY, which is not set"):
        annotate(RECORDS[:4], cfg, answer_type="numeric", base_url="http://192.0.2.1:9/v1",
                 ledger_path=tmp_path / "other.sqlite", out_path=None)
    assert not (tmp_path / "other.sqlite").exists()


def _server_handle(url: str):
    import urllib.request

    def stats() -> dict:
        with urllib.request.urlopen(url[: -len("/v1")] + "/stats", timeout=5) as resp:
            return json.loads(resp.read())

    return stats
