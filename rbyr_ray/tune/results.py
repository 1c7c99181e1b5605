"""A sweep's results, built from the trials' own run dirs (so they survive a resume and can be rebuilt).

    sweep_dir/
      trials/<trial_id>/trial.json     the trial's sampled params; the rest of the folder is a normal run dir
      results.csv, results.md          one row per trial: params, val accuracy per round, teacher requests
      best_config.yaml                 the selected trial's full experiment, ready for `rbyr-ray run`
      sweep.png                        val accuracy per round per trial; teacher requests sent vs ledger hits
      sweep_summary.json               best trial, its test accuracy, whole-sweep teacher totals

    table = trial_table(sweep_dir)           # pandas.DataFrame, one row per trial
    write_table(table, sweep_dir)            # results.csv + results.md
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..loop.rundir import RunDir
from ..loop.summary import build_summary

TRIAL_FILE = "trial.json"


def trial_dirs(sweep_dir: Path) -> list[Path]:
    """Trial run dirs in the order the trials started."""
    dirs = [d for d in (sweep_dir / "trials").glob("*") if (d / TRIAL_FILE).exists()]
    return sorted(dirs, key=lambda d: (json.loads((d / TRIAL_FILE).read_text()).get("started", 0), d.name))


def _summary(trial_dir: Path) -> dict:
    """The loop's per-round summary, rebuilt from the manifest: current even for a trial stopped mid-round."""
    manifest = trial_dir / "manifest.json"
    if not manifest.exists():
        return {"rounds": [], "total_wall_s": None, "stages": []}
    rd = RunDir(trial_dir, json.loads(manifest.read_text()))
    return {**build_summary(rd), "stages": list(rd.manifest["stages"].values())}


def trial_row(trial_dir: Path) -> dict:
    """One trial as a flat row: params, val accuracy per round, teacher requests sent and ledger hits."""
    info = json.loads((trial_dir / TRIAL_FILE).read_text())
    summary = _summary(trial_dir)
    # The loop names its evaluation column test_accuracy whatever the split; trials evaluate on val.
    done = [r for r in summary["rounds"] if r.get("test_accuracy") is not None]
    row: dict = {"trial_id": info["trial_id"], "status": info.get("status", "running"),
                 **{key: value for key, value in info["params"].items()}}
    for r in done:
        row[f"val_r{r['round']}"] = r["test_accuracy"]
    learned = [r for r in done if r["round"] >= 1]
    row["rounds_done"] = len(learned)
    row["rounds_planned"] = info.get("rounds")
    row["final_val_accuracy"] = learned[-1]["test_accuracy"] if learned else None
    row["best_val_accuracy"] = max((r["test_accuracy"] for r in learned), default=None)
    row["final_exam_accuracy"] = learned[-1].get("exam_accuracy") if learned else None
    # Stages taken over from another trial (loop.fork) were paid for there: counted once, in that trial.
    own = [e for e in summary["stages"] if "adopted_from" not in e]
    row["teacher_requests"] = sum(e["metrics"].get("teacher_requests") or 0 for e in own if e["stage"] == "teacher")
    row["teacher_ledger_hits"] = sum(e["metrics"].get("teacher_ledger_hits") or 0 for e in own
                                     if e["stage"] == "teacher")
    row["stages_shared"] = len(summary["stages"]) - len(own)
    row["wall_s"] = round(sum(e["wall_s"] for e in own), 1)  # what this trial computed itself
    row["run_dir"] = str(trial_dir)
    if row["status"] == "running":  # the trial process ended without saying so: ASHA stopped it, or it was killed
        row["status"] = "stopped" if row["rounds_done"] < (row["rounds_planned"] or 0) else "done"
    return row


def trial_table(sweep_dir: Path, statuses: dict[str, str] | None = None) -> pd.DataFrame:
    """All trials of a sweep; `statuses` (trial id -> done / stopped / error) overrides what trial.json says."""
    rows = [trial_row(d) for d in trial_dirs(sweep_dir)]
    for row in rows:
        if statuses and row["trial_id"] in statuses:
            row["status"] = statuses[row["trial_id"]]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # Per-round columns in round order, after the params.
    rounds = sorted((c for c in table.columns if c.startswith("val_r")), key=lambda c: int(c[5:]))
    rest = [c for c in table.columns if not c.startswith("val_r")]
    split = rest.index("rounds_done")
    return table[rest[:split] + rounds + rest[split:]]


def _md_cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(table: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A GitHub markdown table (no `tabulate` dependency)."""
    columns = columns or [c for c in table.columns if c != "run_dir"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_md_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def write_table(table: pd.DataFrame, sweep_dir: Path, summary: dict | None = None) -> tuple[Path, Path]:
    """results.csv (every column) and results.md (the table, then the selection and teacher totals)."""
    csv_path, md_path = sweep_dir / "results.csv", sweep_dir / "results.md"
    table.to_csv(csv_path, index=False)
    text = [f"# Sweep {sweep_dir.name}", "", to_markdown(table) if not table.empty else "(no trials)", ""]
    if summary:
        best = summary.get("best") or {}
        if best:
            text += [(f"Selected on **{summary['metric']}** ({summary['mode']}, validation split): trial "
                     f"`{best['trial_id']}` with {', '.join(f'{k}={v}' for k, v in best['params'].items())} "
                     f"-> {summary['metric']} {_md_cell(best['metric_value'])}."), ""]
        if summary.get("best_test_accuracy") is not None:
            text += [(f"Test accuracy of the selected configuration (its final model, test split, reported "
                     f"separately; never used for selection): **{summary['best_test_accuracy']:.4f}** "
                     f"on {summary['best_test_questions']} questions."), ""]
        teacher = summary.get("teacher", {})
        text += [(f"Teacher, whole sweep: {teacher.get('requests_sent', 0)} requests sent, "
                 f"{teacher.get('ledger_hits', 0)} rationales served from the shared ledger (paid for by earlier "
                  f"requests)."), ""]
    md_path.write_text("\n".join(text))
    return csv_path, md_path


def write_plot(table: pd.DataFrame, path: Path, best_trial: str | None = None) -> Path | None:
    """Validation accuracy per round for every trial (the selected one bold), and teacher requests per trial."""
    if table.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [c for c in table.columns if c.startswith("val_r")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (_, row) in enumerate(table.iterrows()):
        xs = [int(c[5:]) for c in rounds if pd.notna(row[c])]
        ys = [row[c] for c in rounds if pd.notna(row[c])]
        best = row["trial_id"] == best_trial
        # Trials that share rounds have identical points there: line styles keep the later ones visible.
        ax.plot(xs, ys, marker="o", linewidth=2.5 if best else 1, alpha=1 if best else 0.6,
                linestyle=["-", "--", ":", "-."][i % 4], label=f"{row['trial_id']}{' (selected)' if best else ''}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy")
    ax.set_title("validation accuracy per round")
    ax.legend(fontsize=7)
    ids = list(table["trial_id"])
    bx.bar(ids, table["teacher_requests"], label="requests sent")
    bx.bar(ids, table["teacher_ledger_hits"], bottom=table["teacher_requests"], label="ledger hits (rationales)")
    # A trial that took its teacher stages over from another trial (share_stages) paid nothing: say so.
    for i, n in enumerate(table.get("stages_shared", pd.Series(0, index=table.index))):
        if n:
            bx.annotate(f"{n} stage{'s' if n > 1 else ''}\ntaken over", (i, 0), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    bx.set_title("teacher requests per trial")
    bx.tick_params(axis="x", labelrotation=45, labelsize=7)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def teacher_totals(table: pd.DataFrame) -> dict:
    """HTTP requests sent against ledger hits over the whole sweep; a hit is one rationale (sample) served from
    the ledger, i.e. paid for by an earlier request of this or another trial."""
    if table.empty:
        return {"requests_sent": 0, "ledger_hits": 0}
    return {"requests_sent": int(table["teacher_requests"].sum()), "ledger_hits": int(table["teacher_ledger_hits"].sum())}


def select_best(table: pd.DataFrame, metric: str, mode: str) -> dict | None:
    """The selected trial: the best final-round value of `metric` on the validation split, among trials that ran
    all their rounds (trials ASHA stopped early compete only when none finished). Ties go to the earlier trial."""
    column = f"final_{metric}"
    if table.empty or column not in table:
        return None
    candidates = table[table[column].notna()]
    finished = candidates[candidates["rounds_done"] >= candidates["rounds_planned"].fillna(0)]
    pool = finished if not finished.empty else candidates
    if pool.empty:
        return None
    values = pool[column].astype(float)
    index = values.idxmax() if mode == "max" else values.idxmin()
    return table.loc[index].to_dict() | {"metric_value": float(values[index])}
