"""The loop with a real LLM teacher: `teacher.backend: openai` against a third-party OpenAI-compatible server
(vLLM's api_server from .venv-vllm, serving SmolLM2-135M), on arith, 2 rounds, with the hint. A teacher this
weak reaches the right answer through false steps; the steps gate must catch them, and a round in which it
accepts nothing must train on nothing and go on.

Heavy: the vLLM start-up and ~2,000 teacher tokens at ~15 tok/s. Figures: it prints, per round, the rationales
obtained, accepted by the answer gate, rejected of those by the step gate, and caught examples, and writes them
to $RBYR_LLM_FIGURES when set. Run alone with:
    .venv/bin/python -m pytest tests/test_teacher_llm.py -q -s
"""

from __future__ import annotations

import json
import logging
import os

import pandas as pd
import pytest
import test_teacher_vllm

from rbyr_ray.config import load_config
from rbyr_ray.loop.rounds import run
from rbyr_ray.tasks import check_steps

pytestmark = pytest.mark.slow  # the LLM run is heavy too; the no-accepted-rationale run is ~20 s
vllm_server = test_teacher_vllm.vllm_server  # the same server fixture (module-scoped)

SMALL = ["rounds=2", "task.arith.n_train=16", "task.arith.n_test=10", "exam.round0=true", "exam.samples=1",
         "exam.limit=null", "exam.max_new_tokens=40", "eval.max_new_tokens=40", "train.epochs=1",
         "train.batch_size=4", "tracking.wandb=false"]


def _round_figures(run_dir, k: int) -> dict:
    rows = pd.read_parquet(run_dir / f"round_{k}" / "teacher.parquet")
    obtained = rows[rows["text"].notna()]
    reasons = obtained["reject_reason"].fillna("")
    caught = obtained[reasons.str.startswith("false_step: ")]
    accepted = obtained[obtained["accepted"].astype(bool)]
    return {"round": k, "questions": int(rows["id"].nunique()), "obtained": len(obtained),
            "accepted_by_answer_gate": int(obtained["accepted"].sum()) + len(caught),
            "rejected_by_step_gate": len(caught), "accepted": int(obtained["accepted"].sum()),
            "wrong_answer": int((reasons == "wrong_answer").sum()), "unparseable": int((reasons == "unparseable").sum()),
            "caught": [{"id": i, "rationale": r, "reason": why}
                       for i, r, why in zip(caught["id"], caught["rationale"], caught["reject_reason"])],
            # Accepted rationales (what training reads) with a false step, recorded or found by the checker: none
            # may pass the steps gate, whether or not it caught anything.
            "accepted_with_false_step": [
                {"id": i, "rationale": r, "recorded": f} for i, r, f in zip(accepted["id"], accepted["rationale"],
                                                                           accepted["false_steps"])
                if (isinstance(f, str) and f) or check_steps(str(r)).false_steps]}


@pytest.mark.heavy
def test_loop_with_a_weak_llm_teacher_gates_false_steps(vllm_server, ray_cluster, tmp_path, caplog):
    cfg = load_config("configs/demo.yaml", [
        *SMALL, "name=llm-teacher", "teacher.backend=openai", f"teacher.base_url={vllm_server}",
        f"teacher.model={test_teacher_vllm.SERVED_NAME}", "teacher.api_key_env=null", "teacher.samples=2",
        "teacher.max_tokens=48", "teacher.temperature=0.7", "teacher.concurrency=8", "teacher.timeout_s=300",
        "teacher.max_retries=2", "teacher.use_hint=true"])
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="rbyr_ray.loop.rounds"):
        summary = run(cfg, run_dir=run_dir)
    figures = [_round_figures(run_dir, k) for k in (1, 2) if (run_dir / f"round_{k}" / "teacher.parquet").exists()]
    print(json.dumps(figures, indent=1))
    if os.environ.get("RBYR_LLM_FIGURES"):
        with open(os.environ["RBYR_LLM_FIGURES"], "w") as fh:
            json.dump({"figures": figures, "summary": summary}, fh, indent=1)

    rounds = {r["round"]: r for r in summary["rounds"]}
    assert sorted(rounds) == [0, 1, 2] and all(rounds[k]["test_accuracy"] is not None for k in (0, 1, 2))
    records = {r["round"]: r for r in figures}
    assert records[1]["questions"] == 16 and records[1]["obtained"] > 0
    for k, fig in records.items():
        row = rounds[k]
        assert row["teacher_accepted"] == fig["accepted"]
        assert row["teacher_rejected_steps"] == fig["rejected_by_step_gate"]
        assert row["teacher_rejected_answer"] == fig["wrong_answer"] + fig["unparseable"]
        assert fig["accepted_with_false_step"] == [], fig["accepted_with_false_step"]
        for caught in fig["caught"]:  # each names false steps that are false, in its own rationale
            steps = caught["reason"].removeprefix("false_step: ").split("; ")
            assert check_steps(caught["rationale"]).false_steps == steps
        if fig["accepted"] == 0:  # nothing accepted: said in one line, nothing trained, the loop went on
            assert row["lm_loss"] is None
            assert any(f"round {k}: no training" in m for m in caplog.messages)
        else:
            assert row["lm_loss"] is not None


def test_a_round_with_no_accepted_rationale_trains_on_nothing_and_goes_on(ray_cluster, tmp_path, caplog):
    """The local teacher answering every question wrongly: round 1 says so in one line, keeps the untuned
    weights (its evaluation equals round 0's: greedy on the same weights) and the run completes."""
    cfg = load_config("configs/demo.yaml", [
        *SMALL, "rounds=1", "task.arith.n_train=6", "task.arith.n_test=6", "exam.round0=false",
        "eval.max_new_tokens=16", "teacher.wrong_rate=1.0"])
    with caplog.at_level(logging.WARNING, logger="rbyr_ray.loop.rounds"):
        summary = run(cfg, run_dir=tmp_path / "run")
    row = {r["round"]: r for r in summary["rounds"]}
    assert row[1]["teacher_accepted"] == 0 and row[1]["teacher_rejected_answer"] == 12 and row[1]["lm_loss"] is None
    assert row[1]["test_accuracy"] == row[0]["test_accuracy"]
    lines = [m for m in caplog.messages if "round 1: no training" in m]
    assert len(lines) == 1 and "12 rejected for the answer, 0 for a false step" in lines[0]
    assert not (tmp_path / "run" / "round_1" / "model").exists()
