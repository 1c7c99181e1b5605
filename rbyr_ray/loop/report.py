"""report.png and weak spots (accuracy per question tag per round), rebuilt by `rbyr-ray report RUN_DIR`."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from .files import broken_stage_outputs, first_broken, read_parquet
from .summary import reflection_state

log = logging.getLogger(__name__)


def write_report(run_dir: Path, summary: dict, weak: pd.DataFrame | None = None) -> Path:
    """Plot test accuracy per round against the untuned student, teacher acceptance, the two losses and the
    reflection loss's learning signal (rounds where it had nothing to act on say so instead of plotting 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in summary["rounds"] if r["round"] >= 1]
    ks = [r["round"] for r in rounds]
    panels = 5 if weak is not None and len(weak) else 4
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6))
    ax = axes[0]
    ax.plot(ks, [r["test_accuracy"] for r in rounds], "o-", label="student after round k")
    if summary.get("untuned_test_accuracy") is not None:
        ax.axhline(summary["untuned_test_accuracy"], color="gray", ls="--", label="untuned student")
    ax.set(title="test accuracy", xlabel="round", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax = axes[1]
    # The share of the rationales obtained that were accepted, and rejected for the answer, a false step, talk about
    # the feedback prompt, or being cut off.
    parts = [("teacher_accepted", "accepted", "tab:green"), ("teacher_rejected_answer", "wrong answer", "tab:red"),
             ("teacher_rejected_steps", "false step", "tab:orange"),
             ("teacher_rejected_feedback", "refers to feedback", "tab:purple"),
             ("teacher_rejected_truncated", "truncated", "tab:gray")]
    totals = [max(1, sum(r.get(key) or 0 for key, _, _ in parts)) for r in rounds]
    bottom = [0.0] * len(rounds)
    for key, label, color in parts:
        share = [(r.get(key) or 0) / total for r, total in zip(rounds, totals)]
        ax.bar(ks, share, bottom=bottom, color=color, label=label)
        bottom = [b + s for b, s in zip(bottom, share)]
    ax.set(title="teacher rationales", xlabel="round", ylim=(0, 1))
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.plot(ks, [r["lm_loss"] for r in rounds], "o-", label="L_lm")
    acted = [r for r in rounds if reflection_state(r) in ("triplet", "ranking", "hinge", "redi", "dpop")]
    ax.plot([r["round"] for r in acted], [r["reflection_loss"] for r in acted], "s-", label="L_ref")
    _say_why_not(ax, rounds)
    ax.set(title="training losses", xlabel="round")
    ax.legend(fontsize=8)
    ax = axes[3]
    if any(reflection_state(r) == "ranking" for r in acted):
        ax.plot([r["round"] for r in acted], [r["rewards/accuracies"] for r in acted], "o-", label="rewards/accuracies")
        ax.plot([r["round"] for r in acted], [r["rewards/margins"] for r in acted], "s-", label="rewards/margins")
        title = "ranking: teacher preferred over mistake"
    elif acted and reflection_state(acted[0]) in ("hinge", "redi", "dpop"):
        # Does ℓ̄(t) fall with ℓ̄(m)? The likelihood kinds act on what decoding uses.
        ks_acted = [r["round"] for r in acted]
        ax.plot(ks_acted, [r.get("loglik_chosen") for r in acted], "o-", label="ℓ̄(t) teacher")
        ax.plot(ks_acted, [r.get("loglik_rejected") for r in acted], "s-", label="ℓ̄(m) mistake")
        extra = {"hinge": ("hinge_active", "active hinges"), "dpop": ("dpop_penalty", "dpop penalty term")}
        if reflection_state(acted[0]) in extra:
            key, label = extra[reflection_state(acted[0])]
            ax.plot(ks_acted, [r.get(key) for r in acted], "^-", label=label)
        title = f"{reflection_state(acted[0])}: mean token log-likelihoods"
    else:
        ax.plot([r["round"] for r in acted], [r.get("reflection_gap") for r in acted], "o-", label="Δ = cos(a,p) − cos(a,n)")
        ax.plot([r["round"] for r in acted], [r.get("reflection_active") for r in acted], "s-", label="active hinges")
        title = "reflection signal (last epoch)"
    ax.axhline(0, color="gray", lw=0.5)
    _say_why_not(ax, rounds)
    ax.set(title=title, xlabel="round")
    ax.legend(fontsize=7)
    if panels == 5:
        ax = axes[4]
        for (tag, value), group in weak.groupby(["tag", "value"]):
            ax.plot(group["round"], group["accuracy"], "o-", label=f"{tag}={value}")
        ax.set(title="accuracy by question tag", xlabel="round", ylim=(0, 1))
        ax.legend(fontsize=6, ncol=2)
    for ax in axes:
        ax.set_xticks(sorted({0, *ks}) if ax is axes[0] else ks)
    fig.tight_layout()
    out = run_dir / "report.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _say_why_not(ax, rounds: list[dict]) -> None:
    """Write "no triplets" / "no pairs" / "λ = 0" at the rounds where the reflection loss did not act."""
    for r in rounds:
        state = reflection_state(r)
        if state in ("no triplets", "no pairs", "off"):
            ax.annotate("λ = 0" if state == "off" else state, (r["round"], 0.5), xycoords=("data", "axes fraction"),
                        ha="center", va="center", fontsize=8, color="gray",
                        bbox={"boxstyle": "round", "fc": "white", "ec": "lightgray"})
    ks = [r["round"] for r in rounds]
    if ks:
        ax.set_xlim(min(ks) - 0.5, max(ks) + 0.5)  # a round with nothing plotted keeps its place


def weak_spots(run_dir: Path, skip: Collection[Path] = ()) -> pd.DataFrame:
    """Accuracy per (tag, value) per round over the evaluation questions (arith steps/ops, SVAMP type, ...);
    the eval files in `skip` (known broken) left out."""
    from ..tasks import load_task
    from .rundir import load_run_config

    cfg = load_run_config(run_dir)
    task = load_task(cfg.task, seed=cfg.seed)
    tags = {r.id: r.tags for r in task.train + task.test + task.val}
    frames = []
    for path in sorted(run_dir.glob("round_*/eval.parquet")):
        if path in skip:
            continue
        k = int(path.parent.name.split("_")[1])
        rows = read_parquet(path, columns=["id", "correct"])
        for qid, correct in zip(rows["id"], rows["correct"]):
            for tag, value in tags.get(qid, {}).items():
                frames.append((k, tag, str(value), bool(correct)))
    if not frames:
        return pd.DataFrame(columns=["round", "tag", "value", "n", "accuracy"])
    df = pd.DataFrame(frames, columns=["round", "tag", "value", "correct"])
    out = df.groupby(["tag", "value", "round"], as_index=False).agg(n=("correct", "size"), accuracy=("correct", "mean"))
    return out.sort_values(["tag", "value", "round"]).reset_index(drop=True)


def format_weak_spots(weak: pd.DataFrame) -> str:
    if weak.empty:
        return "no tagged evaluation questions"
    table = weak.pivot_table(index=["tag", "value"], columns="round", values="accuracy")
    table.columns = [f"round {c}" for c in table.columns]
    counts = weak.groupby(["tag", "value"])["n"].max()
    table.insert(0, "n", counts)
    return table.to_string(float_format=lambda v: f"{v:.3f}")


def rebuild(run_dir: Path) -> dict:
    """Rebuild summary.json, the round table, report.png and weak_spots.csv from a run dir's files. A completed
    stage's broken output (a truncated or foreign Parquet file, a model folder without weights) is left out,
    and named at the end as a BrokenFile error with the resume flag that recomputes it."""
    from .rundir import RunDir, load_run_config
    from .summary import build_summary, print_round_table

    rd = RunDir.create_or_resume(run_dir, load_run_config(run_dir))
    summary = build_summary(rd)
    rd.write_summary(summary)
    print_round_table(summary)
    broken = broken_stage_outputs(rd)
    weak = weak_spots(run_dir, skip={Path(exc.path) for exc in broken if exc.path})
    weak.to_csv(run_dir / "weak_spots.csv", index=False)
    print("\nweak spots: test accuracy per question tag and round")
    print(format_weak_spots(weak))
    out = write_report(run_dir, summary, weak)
    print(f"\nwrote {out}")
    log.debug(json.dumps(summary))
    if broken:
        raise first_broken(broken, "; the report is written from the other files")
    return summary
