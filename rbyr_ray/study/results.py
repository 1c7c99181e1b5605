"""A study's results from its run dirs' summaries: per-preset accuracy per round (mean ± std over seeds),
paired gaps between presets, budgets (training tokens, teacher requests, wall time), a plot and a markdown
report. Everything is rebuilt from the run dirs, so `rbyr-ray study CONFIG --report` redraws a finished study.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .study import StudySpec

# Two-sided 95% critical values of Student's t by degrees of freedom (paired gaps over n seeds: n - 1 df).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _run_tokens(run_dir: Path) -> int:
    """Training tokens of a run: anchor tokens, plus positive/negative tokens where the reflection loss used them."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return sum(int(e["metrics"].get("tokens", 0)) for e in manifest["stages"].values() if e["stage"] == "train")


def collect(spec: StudySpec) -> dict:
    """{preset: {seed: summary + train_tokens}} for every run dir with a summary."""
    runs: dict[str, dict[int, dict]] = {}
    for preset in spec.presets:
        for seed in spec.seeds:
            path = spec.run_dir(preset, seed) / "summary.json"
            if path.exists():
                summary = json.loads(path.read_text())
                summary["train_tokens"] = _run_tokens(path.parent)
                runs.setdefault(preset, {})[seed] = summary
    return runs


def _accuracy(summary: dict, k: int) -> float | None:
    return next((r["test_accuracy"] for r in summary["rounds"] if r["round"] == k), None)


# The reflection loss's learning signal per round (summary.json fields): the triplet's Δ and active hinges,
# ranking's rewards/margins and rewards/accuracies.
_SIGNALS = ["reflection_loss", "reflection_gap", "reflection_active", "rewards/margins", "rewards/accuracies"]


def _signals(by_seed: dict, k: int) -> dict:
    """Per signal, mean ± std over the seeds where round k's loss acted; the round's state when it never did."""
    from ..loop.summary import reflection_state

    rows = [r for s in by_seed.values() for r in s["rounds"] if r["round"] == k]
    states = {reflection_state(r) for r in rows} - {None}
    out: dict = {"state": states.pop() if len(states) == 1 else None}
    for key in _SIGNALS:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = _mean_std(values)
    return out


def aggregate(spec: StudySpec, runs: dict) -> dict:
    presets = {}
    for preset, by_seed in runs.items():
        max_round = max(max(r["round"] for r in s["rounds"]) for s in by_seed.values())
        per_round = {}
        for k in range(max_round + 1):
            values = [a for s in by_seed.values() if (a := _accuracy(s, k)) is not None]
            if values:
                mean, std = _mean_std(values)
                per_round[k] = {"mean": mean, "std": std, "n": len(values)}
        finals = {seed: s["final_test_accuracy"] for seed, s in by_seed.items() if s["final_test_accuracy"] is not None}
        requests = [sum((r.get("teacher_requests") or 0) + (r.get("teacher_ledger_hits") or 0) for r in s["rounds"])
                    for s in by_seed.values()]
        presets[preset] = {
            "per_round": per_round, "final": finals,
            "signals": {k: _signals(by_seed, k) for k in range(1, max_round + 1)},
            "final_mean_std": _mean_std(list(finals.values())) if finals else None,
            "train_tokens": _mean_std([s["train_tokens"] for s in by_seed.values()]),
            "teacher_requests": _mean_std(requests),
            "wall_s": _mean_std([s["total_wall_s"] for s in by_seed.values()]),
            "seeds": sorted(by_seed),
        }
    untuned = [a for by_seed in runs.values() for s in by_seed.values() if (a := s.get("untuned_test_accuracy")) is not None]
    return {"presets": presets, "untuned": _mean_std(untuned) if untuned else None, "gaps": _paired_gaps(presets)}


def _paired_gaps(presets: dict) -> list[dict]:
    """Final-accuracy gap of every preset pair, paired by seed (same seed = same untuned start, same round 1)."""
    names, gaps = list(presets), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seeds = sorted(set(presets[a]["final"]) & set(presets[b]["final"]))
            diffs = [presets[b]["final"][s] - presets[a]["final"][s] for s in seeds]
            if not diffs:
                continue
            mean, std = _mean_std(diffs)
            n = len(diffs)
            t = mean / (std / math.sqrt(n)) if n > 1 and std > 0 else (math.inf if mean else 0.0)
            critical = _T95.get(n - 1, 1.96) if n > 1 else math.inf
            gaps.append({"a": a, "b": b, "n": n, "mean": mean, "std": std, "t": t, "critical": critical,
                         "outside_noise": n > 1 and abs(t) > critical})
    return gaps


def _pm(ms: tuple[float, float] | None, scale: float = 100.0, digits: int = 1) -> str:
    if ms is None:
        return "-"
    return f"{ms[0] * scale:.{digits}f} ± {ms[1] * scale:.{digits}f}"


def to_markdown(spec: StudySpec, agg: dict, study_wall_s: float | None = None) -> str:
    presets = agg["presets"]
    max_round = max((max(p["per_round"]) for p in presets.values()), default=0)
    lines = [f"# Study `{spec.name}`: test accuracy (%) per round, mean ± std over seeds", ""]
    lines.append("| preset | seeds | " + " | ".join(f"round {k}" for k in range(max_round + 1)) + " | final |")
    lines.append("|---|---|" + "---|" * (max_round + 2))
    for name, p in presets.items():
        cells = [_pm((p["per_round"][k]["mean"], p["per_round"][k]["std"])) if k in p["per_round"] else "-"
                 for k in range(max_round + 1)]
        lines.append(f"| {name} | {len(p['seeds'])} | " + " | ".join(cells) + f" | {_pm(p['final_mean_std'])} |")
    lines += ["", f"Round 0 is the untuned student: {_pm(agg['untuned'])} %.", "",
              "## Budgets per run (mean ± std over seeds)", "",
              "| preset | training tokens | teacher requests | wall time (s, stages) |", "|---|---|---|---|"]
    for name, p in presets.items():
        tok, req, wall = p["train_tokens"], p["teacher_requests"], p["wall_s"]
        lines.append(f"| {name} | {tok[0]:,.0f} ± {tok[1]:,.0f} | {req[0]:.0f} ± {req[1]:.0f} | "
                     f"{wall[0]:.0f} ± {wall[1]:.0f} |")
    lines += ["", ("Wall time and teacher requests count every stage of a run, including stages computed once and "
                   "shared by presets with the same seed (what a standalone run would cost).")]
    if study_wall_s is not None:
        lines.append(f"The whole study took {study_wall_s / 60:.1f} min of wall time in this invocation.")
    lines += ["", "## The reflection loss's learning signal per round (last epoch, mean ± std over seeds)", "",
              ("Triplet: Δ = cos(a,p) − cos(a,n) and the fraction of active hinges (Δ < margin); ranking: TRL's "
               "rewards/margins and rewards/accuracies (pairs where the teacher's rationale is preferred)."), "",
              "| preset | round | L_ref | Δ | active | rewards/margins | rewards/accuracies |", "|---|---|---|---|---|---|---|"]
    for name, p in presets.items():
        for k, sig in p.get("signals", {}).items():
            if sig["state"] in ("off", "no triplets", "no pairs"):
                lines.append(f"| {name} | {k} | {'λ = 0' if sig['state'] == 'off' else sig['state']} | | | | |")
                continue
            cells = [_pm(sig.get(key), scale=1.0, digits=3) for key in _SIGNALS]
            lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    n_gaps = len(agg["gaps"])
    lines += ["", "## Paired gaps in final test accuracy (points; b − a, paired by seed)", "",
              (f"{n_gaps} pairs are tested, each at 95%: by chance alone about {0.05 * n_gaps:.1f} of them would read "
               "'yes', so a lone 'yes' among many pairs is weak evidence." if n_gaps > 1 else ""), "",
              "| a | b | seeds | gap mean ± std | paired t | critical t (95%) | outside seed noise |",
              "|---|---|---|---|---|---|---|"]
    for g in agg["gaps"]:
        lines.append(f"| {g['a']} | {g['b']} | {g['n']} | {g['mean'] * 100:+.1f} ± {g['std'] * 100:.1f} | "
                     f"{g['t']:.2f} | {g['critical']:.2f} | {'yes' if g['outside_noise'] else 'no'} |")
    return "\n".join(lines) + "\n"


# The signal drawn per round beside the accuracy: the triplet's gap, ranking's preference accuracy.
_PLOTTED_SIGNALS = {"reflection_gap": "Δ = cos(a,p) − cos(a,n)", "rewards/accuracies": "rewards/accuracies"}


def plot(agg: dict, path: Path) -> Path:
    """Accuracy per round; beside it, when any preset's loss acted, its learning signal per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signals = {(name, key): {k: sig[key] for k, sig in p.get("signals", {}).items() if key in sig}
               for name, p in agg["presets"].items() for key in _PLOTTED_SIGNALS}
    signals = {nk: per_round for nk, per_round in signals.items() if per_round}
    fig, axes = plt.subplots(1, 2 if signals else 1, figsize=(11 if signals else 6, 4), squeeze=False)
    ax = axes[0][0]
    colors = {name: f"C{i}" for i, name in enumerate(agg["presets"])}
    for name, p in agg["presets"].items():
        ks = sorted(p["per_round"])
        ax.errorbar(ks, [p["per_round"][k]["mean"] * 100 for k in ks], yerr=[p["per_round"][k]["std"] * 100 for k in ks],
                    marker="o", capsize=3, label=name, color=colors[name])
    if agg["untuned"] is not None:
        ax.axhline(agg["untuned"][0] * 100, color="gray", linestyle="--", label="untuned")
    rounds = sorted({k for p in agg["presets"].values() for k in p["per_round"]})
    ax.set_xticks(rounds)
    ax.set_xlabel("round (0 = untuned)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    if signals:
        ax = axes[0][1]
        for (name, key), per_round in signals.items():
            ks = sorted(per_round)
            ax.errorbar(ks, [per_round[k][0] for k in ks], yerr=[per_round[k][1] for k in ks], marker="o", capsize=3,
                        color=colors[name], linestyle="-" if key == "reflection_gap" else ":",
                        label=f"{name}: {_PLOTTED_SIGNALS[key]}")
        ax.set_xticks(sorted({k for per_round in signals.values() for k in per_round}))
        ax.set_xlabel("round (last epoch's mean)")
        ax.set_ylabel("Δ (triplet) / preference accuracy (ranking)")
        ax.set_title("the reflection loss's learning signal", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(spec: StudySpec, study_wall_s: float | None = None) -> dict:
    agg = aggregate(spec, collect(spec))
    out = spec.out_dir()
    (out / "results.md").write_text(to_markdown(spec, agg, study_wall_s) + "\n![accuracy per round](results.png)\n")
    plot(agg, out / "results.png")
    serial = json.loads(json.dumps(agg, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))
    (out / "results.json").write_text(json.dumps(serial, indent=1))
    return agg
