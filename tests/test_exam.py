"""The exam as a real Ray Data pipeline over the real SmolLM2 (hf engine): graded Parquet rows, progress,
sampling, failure isolation, and `rbyr-ray eval --json`."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from conftest import EXAM_POISON

from rbyr_ray.config import ExperimentConfig
from rbyr_ray.student.engines import Generation
from rbyr_ray.student.exam import COLUMNS, FAIL_ENV, ExamProgress, ExamWorker, length_ordered, run_exam
from rbyr_ray.tasks import load_task
from rbyr_ray.tasks.records import Record

pytestmark = pytest.mark.slow
TEST = load_task(ExperimentConfig().task).test
TOO_LONG = Record(id="too-long", question="Mia has 3 apples. " * 600 + "How many apples?", answer="3")
POISON = EXAM_POISON  # in FAIL_ENV of the shared Ray's workers (conftest.py)
# Questions the untuned SmolLM2 answers right greedily ("2 + 2 = 4", "5 * 2 = 10"); their twins carry a wrong gold.
RIGHT = [Record(id="easy-add", question="What is 2 + 2?", answer="4"),
         Record(id="easy-mul", question="What is 5 times 2?", answer="10")]
WRONG = [Record(id=f"{r.id}-wrong-gold", question=r.question, answer=str(int(r.answer) + 1)) for r in RIGHT]


def _last_number(text: str) -> float | None:
    """The test's own reading of an answer: the number after "Answer:", else the last number."""
    import re

    after = re.search(r"Answer:\s*(-?[\d,]*\.?\d+)", text)
    numbers = [after.group(1)] if after else re.findall(r"-?[\d,]*\.?\d+", text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def small_cfg(**exam) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.exam = cfg.exam.model_copy(update={"batch_size": 8, **exam})
    return cfg


def test_eval_grades_rows_writes_parquet_and_isolates_an_overlong_prompt(ray_cluster, tmp_path):
    records = [*TEST[:10], TOO_LONG, *RIGHT, *TEST[10:12], *WRONG]
    seen: list[ExamProgress] = []
    out = tmp_path / "eval.parquet"
    result = run_exam(records, "smollm2-135m", small_cfg(), answer_type="numeric", samples=1, greedy=True,
                      max_new_tokens=32, out_path=out, seed=0, progress=seen.append)

    rows = result.rows
    assert list(rows.columns) == COLUMNS
    assert list(rows["id"]) == [r.id for r in records]  # question order, whatever order batches finished
    bad = rows[rows["id"] == "too-long"].iloc[0]
    assert "prompt too long" in bad["error"] and not bad["correct"] and bad["n_tokens"] == 0
    good = rows[rows["id"] != "too-long"]
    assert good["error"].isna().all() and (good["n_tokens"] > 0).all() and (good["n_tokens"] <= 32).all()
    assert not good["rationale"].str.contains("\n\n").any()  # cut at the blank line
    assert result.n_failed == 1 and result.n_questions == 17
    # Verdicts against the gold answers: known right, known wrong, and every row as the test reads it.
    verdict = dict(zip(rows["id"], rows["correct"]))
    assert all(verdict[r.id] for r in RIGHT), rows[rows["id"].isin([r.id for r in RIGHT])]
    assert not any(verdict[w.id] for w in WRONG)
    gold = {r.id: float(r.answer) for r in records}
    for row in good.itertuples():
        assert row.correct == (_last_number(row.rationale) == gold[row.id]), (row.id, row.rationale, gold[row.id])
    assert result.accuracy == pytest.approx(rows["correct"].mean())
    assert result.tokens_per_s > 0 and result.n_tokens == int(rows["n_tokens"].sum())
    assert seen and seen[-1].done == seen[-1].total == 17 and seen[-1].tokens == result.n_tokens
    # The file holds the rows (values compared, not dtypes: a missing error reads back as NaN, not None).
    def values(frame: pd.DataFrame) -> list:
        return frame.astype(object).where(frame.notna(), None).values.tolist()

    assert values(pd.read_parquet(out)) == values(rows)


def test_exam_samples_n_rationales_per_question(ray_cluster):
    result = run_exam(TEST[:4], "smollm2-135m", small_cfg(), answer_type="numeric", samples=3, greedy=False,
                      max_new_tokens=16, out_path=None, seed=1, progress=None)
    rows = result.rows
    assert len(rows) == 12 and rows.groupby("id")["sample"].apply(sorted).tolist() == [[0, 1, 2]] * 4
    assert rows["error"].isna().all()
    assert rows["rationale"].nunique() > 4  # temperature 1.0, top_k 50: samples differ
    assert 0.0 <= result.sample_accuracy <= 1.0


def test_batches_are_cut_in_prompt_length_order_with_a_questions_samples_together():
    items = [{"id": q, "sample": s, "prompt": prompt} for q, prompt in (("a", "x" * 9), ("b", "x" * 3), ("c", "x" * 9),
                                                                          ("d", "x" * 5)) for s in range(2)]
    assert [(i["id"], i["sample"]) for i in length_ordered(items)] == [
        ("b", 0), ("b", 1), ("d", 0), ("d", 1), ("a", 0), ("a", 1), ("c", 0), ("c", 1)]


def test_an_engine_error_fails_only_its_own_row_and_the_eval_stage_reports_it(ray_cluster, tmp_path, caplog):
    """One row whose generation raises (injected through FAIL_ENV in the engine call) in a batch of six, through
    the run's eval stage and the real Ray Data exam: its batch is retried row by row, only that row fails, and
    the stage counts it in its metrics and says so in one warning line."""
    import logging

    from rbyr_ray.loop.rounds import _StageRunner
    from rbyr_ray.loop.rundir import RunDir
    from rbyr_ray.loop.tracking import Tracker

    poisoned = Record(id="poisoned", question=f"Mia has 3 apples. {POISON} How many apples?", answer="3")
    records = [*TEST[:3], poisoned, *TEST[3:5]]
    cfg = small_cfg()
    cfg.eval = cfg.eval.model_copy(update={"max_new_tokens": 12})
    cfg.tracking = cfg.tracking.model_copy(update={"wandb": False})
    rd = RunDir.create_or_resume(tmp_path / "run", cfg)
    with caplog.at_level(logging.WARNING, logger="rbyr_ray.loop.rounds"):
        stage = _StageRunner(cfg, rd, Tracker(cfg, rd.path), load_task(cfg.task))
        metrics = stage.evaluate(1, records, "smollm2-135m", "numeric")
    frame = pd.read_parquet(rd.path / "round_1" / "eval.parquet")
    rows = frame.set_index("id")
    assert "injected engine failure" in rows.loc["poisoned", "error"] and not rows.loc["poisoned", "correct"]
    others = rows.drop(index="poisoned")
    assert len(others) == 5 and others["error"].isna().all() and (others["n_tokens"] > 0).all()
    assert list(frame["id"]) == [r.id for r in records]
    assert metrics["failed_rows"] == 1 and rd.done(1, "eval")["metrics"]["failed_rows"] == 1
    warned = [m for m in caplog.messages if "round 1 eval: 1 of 6 rows failed" in m]
    assert len(warned) == 1 and "injected engine failure" in warned[0], caplog.messages


def test_a_test_hook_is_read_only_under_its_test_name_and_warns_once(monkeypatch, caplog):
    import logging

    from rbyr_ray import testhooks

    assert FAIL_ENV == "RBYR_TEST_EXAM_FAIL_ON"
    monkeypatch.setattr(testhooks, "_warned", False)
    for name in [k for k in os.environ if k.startswith(testhooks.PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RBYR_EXAM_FAIL_ON", "x")  # the old name: no longer a hook
    with caplog.at_level(logging.WARNING, logger="rbyr_ray.testhooks"):
        assert testhooks.test_hook("EXAM_FAIL_ON") is None and not caplog.messages
        monkeypatch.setenv(FAIL_ENV, "poison")
        assert [testhooks.test_hook("EXAM_FAIL_ON") for _ in range(3)] == ["poison"] * 3
    warned = [m for m in caplog.messages if "test-only hooks are set" in m]
    assert len(warned) == 1 and FAIL_ENV in warned[0]


def test_a_right_answer_reached_by_a_false_step_is_marked_and_a_mistake_under_exam_mistakes_steps(tmp_path):
    """`correct` stays answer-based; `false_steps` names the false steps of the graded text (up to the blank
    line); read_mistakes counts such a sample only with exam.mistakes=steps (and so asks the teacher about it)."""
    from types import SimpleNamespace

    from rbyr_ray.loop.rounds import read_mistakes

    worker = ExamWorker.__new__(ExamWorker)  # grading alone, without loading a model
    worker.engine_name, worker.answer_type = "hf", "numeric"
    texts = {"right": "12 + 7 = 19. 19 - 3 = 16.\nAnswer: 16",
             "false_step": "12 + 7 = 20. 19 - 3 = 16.\nAnswer: 16",
             "wrong": "12 + 7 = 19. 19 - 3 = 15.\nAnswer: 15",
             "after_blank": "12 + 7 = 19. 19 - 3 = 16.\nAnswer: 16\n\n2 + 2 = 5"}
    rows = pd.DataFrame([worker._grade(pd.Series({"id": qid, "sample": 0, "answer": "16", "choices": []}),
                                       Generation(text, 12)) for qid, text in texts.items()])
    assert list(rows.columns) == COLUMNS
    assert rows["correct"].tolist() == [True, True, False, True]
    assert rows["false_steps"].tolist() == ["", "12 + 7 = 20", "19 - 3 = 15", ""]
    worker.answer_type = "choice"  # nothing to compute: never marked
    choice = worker._grade(pd.Series({"id": "c", "sample": 0, "answer": "b", "choices": ["x", "y"]}),
                           Generation("2 + 2 = 5, so (b).", 5))
    assert choice["correct"] and choice["false_steps"] == ""

    (tmp_path / "round_2").mkdir()
    rows.to_parquet(tmp_path / "round_2" / "exam.parquet")
    rd = SimpleNamespace(path=tmp_path)
    assert read_mistakes(rd, 2, 4) == {"wrong": [texts["wrong"]]}
    assert read_mistakes(rd, 2, 4, "steps") == {"false_step": [texts["false_step"]], "wrong": [texts["wrong"]]}
    # An exam written before the column existed: mistakes by the answer alone, in either mode.
    rows.drop(columns="false_steps").to_parquet(tmp_path / "round_2" / "exam.parquet")
    assert read_mistakes(rd, 2, 4, "steps") == {"wrong": [texts["wrong"]]}


def test_cli_eval_prints_accuracy_and_a_json_line(ray_cluster, tmp_path, capsys):
    from rbyr_ray.cli import main

    out = tmp_path / "cli.parquet"
    code = main(["eval", "--task", "arith", "--model", "smollm2-135m", "--limit", "3", "--max-new-tokens", "16",
                 "--json", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "accuracy" in lines[-2]
    summary = json.loads(lines[-1])
    assert set(summary) == {"task", "model", "engine", "n", "accuracy", "tokens_per_s"}
    assert summary["task"] == "arith" and summary["engine"] == "hf" and summary["n"] == 3
    assert len(pd.read_parquet(out)) == 3
