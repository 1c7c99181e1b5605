"""summary.json, the round table and report.png from a manifest: how the reflection loss's signal is shown.

Run dirs are built from real manifests (what the loop records), without running models.
"""

from __future__ import annotations

import json
from pathlib import Path

from rbyr_ray.config import load_config
from rbyr_ray.loop.report import write_report
from rbyr_ray.loop.rundir import RunDir
from rbyr_ray.loop.summary import build_summary, format_round_table, reflection_state

REPO = Path(__file__).resolve().parents[1]


def _run(path: Path, kind: str, trains: dict[int, dict]) -> dict:
    cfg = load_config(REPO / "configs/demo.yaml", [f"train.reflection.kind={kind}"])
    rd = RunDir.create_or_resume(path, cfg)
    rd.record(0, "eval", {"accuracy": 0.05}, 1.0)
    for k, train in trains.items():
        rd.record(k, "teacher", {"teacher_requests": 10, "teacher_accepted": 20, "teacher_rejected": 0}, 1.0)
        rd.record(k, "train", {"lm_loss": 0.5 / k, "reflection_kind": kind, "reflection_weight": 0.5, **train}, 2.0)
        rd.record(k, "eval", {"accuracy": 0.2 + 0.1 * k}, 1.0)
    summary = build_summary(rd)
    rd.write_summary(summary)
    return summary


def test_a_round_without_triplets_says_so_instead_of_a_loss_of_0(tmp_path: Path):
    summary = _run(tmp_path / "run", "triplet", {
        1: {"reflection_loss": None, "reflection_items": 0},
        2: {"reflection_loss": 0.93, "reflection_items": 24, "reflection_gap": 0.07, "reflection_active": 1.0,
            "reflection_cos_ap": 0.9, "reflection_cos_an": 0.83}})
    rounds = {r["round"]: r for r in summary["rounds"]}
    assert reflection_state(rounds[1]) == "no triplets" and rounds[1]["reflection_loss"] is None
    assert reflection_state(rounds[2]) == "triplet" and rounds[2]["reflection_gap"] == 0.07
    assert rounds[2]["reflection_active"] == 1.0 and rounds[2]["reflection_items"] == 24
    assert json.loads((tmp_path / "run/summary.json").read_text())["rounds"][1]["reflection_gap"] is None
    lines = format_round_table(summary).splitlines()
    at = lines[0].split().index("ref_loss")
    assert lines[0].split()[at:at + 3] == ["ref_loss", "ref_gap", "active"]
    assert "no triplets" in lines[2] and "0.000" not in lines[2]
    assert lines[3].split()[at:at + 3] == ["0.930", "0.070", "1.000"]
    assert write_report(tmp_path / "run", summary).stat().st_size > 10_000


def test_ranking_rounds_show_trls_reward_margin_and_accuracy(tmp_path: Path):
    summary = _run(tmp_path / "run", "ranking", {
        1: {"reflection_loss": 0.41, "reflection_items": 30, "rewards/margins": 0.8, "rewards/accuracies": 0.9,
            "rewards/chosen": 0.3, "rewards/rejected": -0.5},
        2: {"reflection_loss": None, "reflection_items": 0}})
    lines = format_round_table(summary).splitlines()
    at = lines[0].split().index("ref_loss")
    assert lines[0].split()[at:at + 3] == ["ref_loss", "margins", "pref_acc"]
    assert lines[2].split()[at:at + 3] == ["0.410", "0.800", "0.900"] and "no pairs" in lines[3]
    assert reflection_state({"lm_loss": 0.4, "reflection_weight": 0.0}) == "off"  # lambda = 0: not "no pairs"
    assert write_report(tmp_path / "run", summary).stat().st_size > 10_000


def test_teacher_rejections_by_reason_per_round(tmp_path: Path):
    """Accepted / rejected for a wrong answer / a false step / talk about the feedback prompt / truncation, per
    round, in summary.json and the table; a manifest from before the steps gate (teacher_rejected alone) reads as
    answer rejections, and none for the reasons it did not count."""
    rd = RunDir.create_or_resume(tmp_path / "run", load_config(REPO / "configs/demo.yaml"))
    rd.record(0, "eval", {"accuracy": 0.05}, 1.0)
    rd.record(1, "teacher", {"teacher_accepted": 20, "teacher_rejected": 12, "teacher_rejected_answer": 9,
                             "teacher_rejected_steps": 3, "teacher_rejected_feedback": 2,
                             "teacher_rejected_truncated": 1}, 1.0)
    rd.record(1, "eval", {"accuracy": 0.3}, 1.0)
    rd.record(2, "teacher", {"teacher_accepted": 5, "teacher_rejected": 4}, 1.0)  # an older run's metrics
    rd.record(2, "eval", {"accuracy": 0.35}, 1.0)
    summary = build_summary(rd)
    rounds = {r["round"]: r for r in summary["rounds"]}
    assert [rounds[k]["teacher_rejected_answer"] for k in (0, 1, 2)] == [None, 9, 4]
    assert [rounds[k]["teacher_rejected_steps"] for k in (0, 1, 2)] == [None, 3, 0]
    assert [rounds[k]["teacher_rejected_feedback"] for k in (0, 1, 2)] == [None, 2, 0]
    assert [rounds[k]["teacher_rejected_truncated"] for k in (0, 1, 2)] == [None, 1, 0]
    rd.write_summary(summary)
    assert json.loads((tmp_path / "run/summary.json").read_text())["rounds"][1]["teacher_rejected_feedback"] == 2
    lines = format_round_table(summary).splitlines()
    at = lines[0].split().index("t_acc")
    assert lines[0].split()[at:at + 5] == ["t_acc", "t_rej_a", "t_rej_s", "t_rej_f", "t_rej_t"]
    assert lines[2].split()[at:at + 5] == ["20", "9", "3", "2", "1"]
    assert lines[3].split()[at:at + 5] == ["5", "4", "0", "0", "0"]
    assert write_report(tmp_path / "run", summary).stat().st_size > 10_000


def test_likelihood_kinds_show_their_mean_token_log_likelihoods(tmp_path: Path):
    """hinge, redi, dpop (issue 21): ℓ̄(t), the gap or ℓ̄(m), and the active hinges or dpop's penalty, in
    summary.json, the round table and report.png; round 1 was SFT (λ = 0 before train.reflection.start_round)."""
    signals = {"loglik_chosen": -0.21, "loglik_rejected": -0.93, "loglik_gap": 0.72}
    extra = {"hinge": {"hinge_active": 0.25}, "redi": {}, "dpop": {"dpop_penalty": 0.5, "rewards/margins": 1.5,
                                                                   "rewards/accuracies": 0.9}}
    columns = {"hinge": (["lik_t", "lik_gap", "active"], ["-0.210", "0.720", "0.250"]),
               "redi": (["lik_t", "lik_m", "lik_gap"], ["-0.210", "-0.930", "0.720"]),
               "dpop": (["lik_t", "margins", "penalty"], ["-0.210", "1.500", "0.500"])}
    for kind, (headers, cells) in columns.items():
        summary = _run(tmp_path / kind, kind, {
            1: {"reflection_loss": None, "reflection_items": 0},
            2: {"reflection_loss": 0.3, "reflection_items": 30, **signals, **extra[kind]}})
        rounds = {r["round"]: r for r in summary["rounds"]}
        assert reflection_state(rounds[2]) == kind and rounds[2]["loglik_gap"] == 0.72
        assert all(rounds[2][key] == value for key, value in extra[kind].items())
        lines = format_round_table(summary).splitlines()
        at = lines[0].split().index("ref_loss")
        assert lines[0].split()[at + 1:at + 4] == headers, kind
        assert lines[3].split()[at:at + 4] == ["0.300", *cells], kind
        assert "no pairs" in lines[2]
        assert write_report(tmp_path / kind, summary).stat().st_size > 10_000
