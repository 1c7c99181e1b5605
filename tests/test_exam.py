"""The exam as a real Ray Data pipeline over the real SmolLM2 (hf engine): graded Parquet rows, progress,
sampling, failure isolation, and `rbyr-ray eval --json`."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rbyr_ray.config import ExperimentConfig
from rbyr_ray.student.engines import Generation, SamplingSpec
from rbyr_ray.student.exam import COLUMNS, ExamProgress, ExamWorker, run_exam
from rbyr_ray.tasks import load_task
from rbyr_ray.tasks.records import Record

pytestmark = pytest.mark.slow
TEST = load_task(ExperimentConfig().task).test
TOO_LONG = Record(id="too-long", question="Mia has 3 apples. " * 600 + "How many apples?", answer="3")


def small_cfg(**exam) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.exam = cfg.exam.model_copy(update={"batch_size": 8, **exam})
    return cfg


def test_eval_grades_rows_writes_parquet_and_isolates_an_overlong_prompt(ray_cluster, tmp_path):
    records = [*TEST[:10], TOO_LONG, *TEST[10:12]]
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
    assert result.n_failed == 1 and result.n_questions == 13
    assert result.accuracy == pytest.approx(rows["correct"].mean())
    assert result.tokens_per_s > 0 and result.n_tokens == int(rows["n_tokens"].sum())
    assert seen and seen[-1].done == seen[-1].total == 13 and seen[-1].tokens == result.n_tokens
    assert pd.read_parquet(out).equals(rows)


def test_exam_samples_n_rationales_per_question(ray_cluster):
    result = run_exam(TEST[:4], "smollm2-135m", small_cfg(), answer_type="numeric", samples=3, greedy=False,
                      max_new_tokens=16, out_path=None, seed=1, progress=None)
    rows = result.rows
    assert len(rows) == 12 and rows.groupby("id")["sample"].apply(sorted).tolist() == [[0, 1, 2]] * 4
    assert rows["error"].isna().all()
    assert rows["rationale"].nunique() > 4  # temperature 1.0, top_k 50: samples differ
    assert 0.0 <= result.sample_accuracy <= 1.0


class FlakyEngine:
    """Fails any batch holding the poisoned prompt, like an engine that chokes on one input."""

    name = "hf"

    def generate(self, prompts, spec, seeds):
        if [666] in prompts:
            raise RuntimeError("poisoned prompt")
        return [Generation("2 + 2 = 4.\nAnswer: 4", 7) for _ in prompts]

    def close(self):
        pass


def test_an_engine_error_fails_only_its_own_row():
    worker = ExamWorker.__new__(ExamWorker)  # the batch logic alone, without loading a model
    worker.engine = FlakyEngine()
    outs = worker._generate([[1], [666], [2], [3]], SamplingSpec(max_new_tokens=8), [0, 1, 2, 3])
    assert isinstance(outs[1], str) and "poisoned prompt" in outs[1]
    assert [o.text for i, o in enumerate(outs) if i != 1] == ["2 + 2 = 4.\nAnswer: 4"] * 3


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
