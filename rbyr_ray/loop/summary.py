"""summary.json: the per-round table, built from the manifest alone (so it can be rebuilt at any time)."""

from __future__ import annotations

from .rundir import RunDir

ROUND_FIELDS = ["test_accuracy", "exam_accuracy", "mistake_questions", "teacher_requests", "teacher_ledger_hits",
                "teacher_accepted", "teacher_rejected_answer", "teacher_rejected_steps", "teacher_rejected_feedback",
                "teacher_rejected_truncated", "lm_loss", "reflection_loss"]
# The reflection loss's learning signal over the last epoch (None where it acted on no item): the triplet's gap
# Δ = cos(a,p) - cos(a,n) and its fraction of active hinges; ranking's TRL rewards/margins and rewards/accuracies.
# hinge, redi, dpop: the mean token log-likelihoods ℓ̄(t), ℓ̄(m), their gap, the active hinges, dpop's penalty term.
SIGNAL_FIELDS = ["reflection_gap", "reflection_active", "rewards/margins", "rewards/accuracies",
                 "loglik_chosen", "loglik_rejected", "loglik_gap", "hinge_active", "dpop_penalty"]
# The round table's signal columns per kind: (header, field).
TABLE_SIGNALS = {"triplet": [("ref_gap", "reflection_gap"), ("active", "reflection_active")],
                 "ranking": [("margins", "rewards/margins"), ("pref_acc", "rewards/accuracies")],
                 "hinge": [("lik_t", "loglik_chosen"), ("lik_gap", "loglik_gap"), ("active", "hinge_active")],
                 "redi": [("lik_t", "loglik_chosen"), ("lik_m", "loglik_rejected"), ("lik_gap", "loglik_gap")],
                 "dpop": [("lik_t", "loglik_chosen"), ("margins", "rewards/margins"), ("penalty", "dpop_penalty")]}


def reflection_state(row: dict) -> str | None:
    """What the reflection loss did in a round: None (not trained), "off" (λ = 0), "no triplets" / "no pairs"
    (nothing for it to act on: not a loss of 0), or its kind ("triplet", "ranking")."""
    if row.get("lm_loss") is None:
        return None
    if row.get("reflection_weight") == 0:
        return "off"
    kind = row.get("reflection_kind") or "triplet"
    if row.get("reflection_items") == 0:
        return "no triplets" if kind == "triplet" else "no pairs"
    return kind


def build_summary(rd: RunDir) -> dict:
    def metrics(k: int, stage: str) -> dict:
        entry = rd.done(k, stage)
        return entry["metrics"] if entry else {}

    rounds = []
    for k in rd.rounds():
        exam = metrics(k, "exam") if k != 1 else metrics(0, "exam")  # round 1 learns from round 0's exam
        teacher, train, ev = metrics(k, "teacher"), metrics(k, "train"), metrics(k, "eval")
        row = {
            "round": k,
            "test_accuracy": ev.get("accuracy"),
            "exam_accuracy": exam.get("exam_accuracy"),
            "mistake_questions": exam.get("mistake_questions"),
            "teacher_requests": teacher.get("teacher_requests"),
            "teacher_ledger_hits": teacher.get("teacher_ledger_hits"),
            "teacher_accepted": teacher.get("teacher_accepted"),
            "teacher_rejected": teacher.get("teacher_rejected"),
            # Rejected for a wrong (or no) final answer, and for a false step; runs from before the steps gate
            # rejected only for the answer.
            "teacher_rejected_answer": teacher.get("teacher_rejected_answer", teacher.get("teacher_rejected")),
            "teacher_rejected_steps": teacher.get("teacher_rejected_steps", 0 if teacher else None),
            # Right answers that refer to the student, the hint or the previous attempt, and answers cut off at
            # max_tokens (issue 23); runs from before counted neither.
            "teacher_rejected_feedback": teacher.get("teacher_rejected_feedback", 0 if teacher else None),
            "teacher_rejected_truncated": teacher.get("teacher_rejected_truncated", 0 if teacher else None),
            "lm_loss": train.get("lm_loss"),
            "reflection_loss": train.get("reflection_loss"),
            **{key: train.get(key) for key in SIGNAL_FIELDS},
            "reflection_kind": train.get("reflection_kind"),
            "reflection_weight": train.get("reflection_weight"),
            "reflection_items": train.get("reflection_items"),
            "wall_s": {e["stage"]: e["wall_s"] for e in rd.manifest["stages"].values() if e["round"] == k},
        }
        rounds.append(row)
    untuned = next((r["test_accuracy"] for r in rounds if r["round"] == 0), None)
    finished = [r for r in rounds if r["round"] >= 1 and r["test_accuracy"] is not None]
    return {
        "run_dir": str(rd.path),
        "untuned_test_accuracy": untuned,
        "final_test_accuracy": finished[-1]["test_accuracy"] if finished else None,
        "best_test_accuracy": max((r["test_accuracy"] for r in finished), default=None),
        "total_wall_s": round(sum(e["wall_s"] for e in rd.manifest["stages"].values()), 1),
        "rounds": rounds,
    }


def _cell(value, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:.3f}".rjust(width)
    return str(value).rjust(width)


def format_round_table(summary: dict) -> str:
    # The signal columns of the kind that acted: Δ and active hinges (triplet), TRL's reward margin and accuracy
    # (ranking), the mean token log-likelihoods (hinge, redi, dpop).
    kind = next((state for r in summary["rounds"] if (state := reflection_state(r)) in TABLE_SIGNALS), "triplet")
    signal = [field for _, field in TABLE_SIGNALS[kind]]
    headers = ["round", "test_acc", "exam_acc", "mistakes", "t_req", "t_hits", "t_acc", "t_rej_a", "t_rej_s", "t_rej_f",
               "t_rej_t", "lm_loss", "ref_loss",
               *(header for header, _ in TABLE_SIGNALS[kind]), "wall_s"]
    widths = [9] * len(headers)
    widths[headers.index("ref_loss")] = 11  # room for "no triplets"
    lines = [" ".join(h.rjust(w) for h, w in zip(headers, widths))]
    for r in summary["rounds"]:
        values = [r["round"]] + [r[f] for f in ROUND_FIELDS] + [r.get(f) for f in signal] + [round(sum(r["wall_s"].values()))]
        if reflection_state(r) in ("no triplets", "no pairs"):
            values[headers.index("ref_loss")] = reflection_state(r)
        lines.append(" ".join(_cell(v, w) for v, w in zip(values, widths)))
    if summary.get("untuned_test_accuracy") is not None and summary.get("final_test_accuracy") is not None:
        gain = summary["final_test_accuracy"] - summary["untuned_test_accuracy"]
        lines.append(f"final test accuracy {summary['final_test_accuracy']:.3f} vs untuned "
                     f"{summary['untuned_test_accuracy']:.3f} ({gain * 100:+.1f} points); "
                     f"{summary['total_wall_s']:.0f} s of stages")
    return "\n".join(lines)


def print_round_table(summary: dict) -> None:
    print(format_round_table(summary), flush=True)
