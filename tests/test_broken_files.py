"""Broken files are one-line errors naming the file: a ledger that is not SQLite or is locked, a truncated or
foreign Parquet file in a round folder (`report` and `resume` name it, `resume --recompute` drops its stage),
an unreadable manifest.json, a model folder without weights; and a teacher stage that obtained nothing says
when the key variable is unset.

Real files, no model and no Ray: a finished one-round run dir written by the code that writes one (RunDir and
pandas' Parquet), then broken the way a disk, a copy or a user breaks it. The end-to-end recompute of a real
run is in test_main_job.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pandas as pd
import pytest

from rbyr_ray.cli import main
from rbyr_ray.config import TeacherConfig, load_config
from rbyr_ray.errors import BrokenFile
from rbyr_ray.loop.files import check_stage_outputs, read_parquet
from rbyr_ray.loop.rundir import RunDir
from rbyr_ray.student.exam import COLUMNS as EXAM_COLUMNS
from rbyr_ray.teacher.ledger import CallRecord, Ledger, LedgerError, check_ledger, request_hash, sample_key
from rbyr_ray.train.data import COLUMNS as TRAIN_COLUMNS

TINY = ["name=broken", "rounds=1", "task.arith.n_train=4", "task.arith.n_test=2", "exam.round0=false",
        "tracking.wandb=false"]
STAGES = ["round_0/eval", "round_1/teacher", "round_1/train_data", "round_1/train", "round_1/eval"]


def _eval_rows(correct: list[bool]) -> pd.DataFrame:
    return pd.DataFrame([{"id": f"arith-test-{i}", "sample": 0, "rationale": "2 + 2 = 4.", "predicted": "4",
                          "correct": c, "false_steps": "", "engine": "hf", "error": None, "n_tokens": 6}
                         for i, c in enumerate(correct)], columns=EXAM_COLUMNS)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished one-round run: every stage's file and its manifest entry (the model folder holds real
    safetensors weights, not a model)."""
    import torch
    from safetensors.torch import save_file

    rd = RunDir.create_or_resume(tmp_path / "run", load_config(None, TINY))
    _eval_rows([True, False]).to_parquet(rd.round_dir(0) / "eval.parquet")
    rd.record(0, "eval", {"accuracy": 0.5, "questions": 2}, 1.0)
    pd.DataFrame([{"id": "arith-train-0", "sample": s, "rationale": "2 + 2 = 4.", "accepted": True, "error": None}
                  for s in range(2)]).to_parquet(rd.round_dir(1) / "teacher.parquet")
    rd.record(1, "teacher", {"questions": 1, "teacher_requests": 1, "teacher_accepted": 2}, 1.0)
    pd.DataFrame([{"id": "arith-train-0", "sample": 0, "round": 1, "input_ids": [1, 2, 3], "n_prefix": 1,
                   "n_rationale": 1, "pos_ids": [], "pos_n_rationale": 0, "neg_ids": [], "neg_n_rationale": 0,
                   "valid": False, "has_negative": False}],
                 columns=TRAIN_COLUMNS).to_parquet(rd.round_dir(1) / "train_data.parquet")
    rd.record(1, "train_data", {"items": 1}, 1.0)
    model = rd.round_dir(1) / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(model / "model.safetensors"))
    (rd.round_dir(1) / "ray_train" / "train").mkdir(parents=True)  # Ray Train's checkpoints of this training
    rd.record(1, "train", {"lm_loss": 1.0, "reflection_loss": None, "model_dir": str(model)}, 1.0)
    _eval_rows([True, True]).to_parquet(rd.round_dir(1) / "eval.parquet")
    rd.record(1, "eval", {"accuracy": 1.0, "questions": 2}, 1.0)
    check_stage_outputs(rd)  # all fine as written
    return rd.path


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _one_error_line(code: int, capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"rbyr-ray {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _stages(run_dir: Path) -> list[str]:
    return sorted(json.loads((run_dir / "manifest.json").read_text())["stages"])


# ------------------------------------------------------------------------------------------------ the ledger


def test_a_ledger_that_is_not_sqlite_is_one_line_naming_it_and_left_as_it_was(tmp_path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    ledger.write_text("id,text\n1,these are not the teacher's answers\n" * 40)
    before = ledger.read_bytes()
    code = main(["teacher", "annotate", "--task", "arith", "--limit", "2", "--base-url", "http://127.0.0.1:9/v1",
                 "--ledger", str(ledger), "task.arith.n_train=4", "task.arith.n_test=2"])
    line = _one_error_line(code, capsys, "teacher")
    assert f"{ledger}: not a usable teacher ledger (file is not a database)" in line, line
    assert ledger.read_bytes() == before  # nothing written over it


def test_the_teacher_stage_refuses_a_broken_ledger_before_asking_anything(tmp_path):
    from rbyr_ray.tasks import Record
    from rbyr_ray.teacher.stage import annotate

    ledger = tmp_path / "teacher_ledger.sqlite"
    with Ledger(ledger) as good:
        good.record(CallRecord(call_id=uuid.uuid4().hex, request_hash="r", model="m", request_json="{}",
                               response_json="{}", prompt_tokens=1, completion_tokens=1, latency_s=0.0, cost_usd=0.0,
                               attempts=1, samples=[(0, "k", "text", "stop")]))
    _truncate(ledger)  # a ledger cut short (a full disk, an interrupted copy)
    with pytest.raises(LedgerError, match=r"teacher_ledger\.sqlite: not a usable teacher ledger \("):
        annotate([Record(id="q", question="What is 2 + 2?", answer="4")], TeacherConfig(), answer_type="numeric",
                 base_url="http://127.0.0.1:9/v1", ledger_path=ledger, out_path=None)


def test_a_ledger_locked_by_another_writer_is_one_line_naming_it(tmp_path):
    path = tmp_path / "ledger.sqlite"
    check_ledger(path)  # creates it
    ledger = Ledger(path, busy_timeout_s=0.3)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process writing, and not letting go
    try:
        with pytest.raises(LedgerError, match=rf"{path}: the teacher ledger is locked by another writer \(waited"):
            check_ledger(path, busy_timeout_s=0.3)
        req = request_hash("m", [{"role": "user", "content": "hi"}], {})
        with pytest.raises(LedgerError, match="locked by another writer"):
            ledger.claim([sample_key(req, 0)], lease_s=60)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert ledger.claim([sample_key(req, 0)], lease_s=60) == [sample_key(req, 0)]  # usable once the lock is gone
    ledger.close()


def test_a_teacher_stage_that_obtained_nothing_says_when_the_key_variable_is_unset(monkeypatch):
    from rbyr_ray.teacher.stage import TeacherResult, no_rationale_reason

    rows = pd.DataFrame({"error": ["connection error: Cannot connect to host 127.0.0.1:9"] * 4})
    result = TeacherResult(rows=rows, questions=2, requests_sent=4, ledger_hits=0, accepted=0, rejected=0, failed=4,
                           tokens=0, cost_usd=0.0, wall_s=0.1)
    cfg = TeacherConfig(api_key_env="RBYR_BROKEN_FILES_KEY")
    monkeypatch.delenv("RBYR_BROKEN_FILES_KEY", raising=False)
    reason = no_rationale_reason(result, cfg)
    assert "every request failed" in reason and reason.endswith("($RBYR_BROKEN_FILES_KEY is not set)"), reason
    monkeypatch.setenv("RBYR_BROKEN_FILES_KEY", "set")
    assert "is not set" not in no_rationale_reason(result, cfg)
    assert "is not set" not in no_rationale_reason(result, TeacherConfig(api_key_env=None))


# ------------------------------------------------------------------------------------- the round folders


def test_a_truncated_parquet_is_named_by_resume_with_the_flag_to_recompute_it(run_dir, capsys):
    broken = run_dir / "round_1" / "teacher.parquet"
    _truncate(broken)
    line = _one_error_line(main(["resume", str(run_dir)]), capsys, "resume")
    assert f"{broken}: not a readable Parquet file" in line, line
    assert f"`rbyr-ray resume {run_dir} --recompute round_1/teacher`" in line, line
    assert _stages(run_dir) == sorted(STAGES)  # refused before anything ran
    with pytest.raises(BrokenFile, match="round_1/teacher.parquet: not a readable Parquet file"):
        read_parquet(broken)  # what every reader of a stage file goes through


def test_a_foreign_parquet_is_named_with_the_columns_it_lacks(run_dir, capsys):
    broken = run_dir / "round_1" / "teacher.parquet"
    broken.write_bytes((run_dir / "round_1" / "eval.parquet").read_bytes())  # a readable file, but not this one
    line = _one_error_line(main(["resume", str(run_dir)]), capsys, "resume")
    assert f"{broken}: a Parquet file without the columns accepted" in line and "--recompute round_1/teacher" in line


def test_report_names_a_broken_eval_file_and_reports_the_rest(run_dir, capsys):
    broken = run_dir / "round_1" / "eval.parquet"
    _truncate(broken)
    line = _one_error_line(main(["report", str(run_dir)]), capsys, "report")
    assert f"{broken}: not a readable Parquet file" in line and "--recompute round_1/eval" in line, line
    assert "the report is written from the other files" in line
    assert (run_dir / "report.png").stat().st_size > 10_000
    weak = pd.read_csv(run_dir / "weak_spots.csv")
    assert sorted(set(weak["round"])) == [0]  # round 1's evaluation left out, round 0's kept


def test_an_unreadable_manifest_is_one_line_naming_it(run_dir, capsys):
    manifest = run_dir / "manifest.json"
    for text in ['{"stages": {"round_0/eval": {"round": 0', "", "[]"]:  # cut short, emptied, not a manifest
        manifest.write_text(text)
        line = _one_error_line(main(["resume", str(run_dir)]), capsys, "resume")
        assert f"{manifest}: unreadable manifest (" in line, line
        assert manifest.read_text() == text  # left for the user to look at
    line = _one_error_line(main(["report", str(run_dir)]), capsys, "report")
    assert f"{manifest}: unreadable manifest" in line


def test_a_model_folder_without_weights_is_named(run_dir, capsys):
    from rbyr_ray.student.models import resolve_model_dir

    model = run_dir / "round_1" / "model"
    (model / "model.safetensors").unlink()
    line = _one_error_line(main(["resume", str(run_dir)]), capsys, "resume")
    assert f"{model}: model folder without weights" in line and "--recompute round_1/train" in line, line
    with pytest.raises(BrokenFile, match="model folder without weights"):
        resolve_model_dir(str(model))  # where an exam or a training loads it


def test_recompute_drops_the_stage_and_every_later_one(run_dir, capsys):
    _truncate(run_dir / "round_1" / "teacher.parquet")
    rd = RunDir.create_or_resume(run_dir, load_config(None, TINY))
    assert rd.forget("round_1/teacher") == ["round_1/teacher", "round_1/train_data", "round_1/train", "round_1/eval"]
    assert _stages(run_dir) == ["round_0/eval"]
    assert not (run_dir / "round_1" / "ray_train").exists()  # a new training must not resume from the old one
    check_stage_outputs(rd)  # the broken file belongs to a stage to be computed again: nothing in the way
    line = _one_error_line(main(["resume", str(run_dir), "--recompute", "round_3/eval"]), capsys, "resume")
    assert "--recompute round_3/eval: not a completed stage" in line and "completed: round_0/eval" in line, line
