"""A study's results from its run dirs' summaries: per-preset accuracy per round (mean ± std over seeds),
paired gaps between presets, budgets (training tokens, teacher requests, wall time), a plot and a markdown
report. Everything is rebuilt from the run dirs, so `rbyr-ray study CONFIG --report` redraws a finished study.

Gaps are paired twice: by seed (a paired t-test over the seeds' final accuracies) and by question (every run of a
study evaluates the same test questions): McNemar's exact test on the pooled question × seed pairs, and a
paired bootstrap over questions (each question keeps all its seeds) for a 95% interval of the gap. Every pair of
presets is one comparison; the report says how many were made and gives Holm's adjusted McNemar p.
"""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
from pathlib import Path

import yaml

from .study import StudySpec

log = logging.getLogger(__name__)

# Two-sided 95% critical values of Student's t by degrees of freedom (paired gaps over n seeds: n - 1 df).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _run_tokens(run_dir: Path) -> int:
    """Training tokens of a run: anchor tokens, plus positive/negative tokens where the reflection loss used them."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return sum(int(e["metrics"].get("tokens", 0)) for e in manifest["stages"].values() if e["stage"] == "train")


def final_correct(run_dir: Path, summary: dict) -> dict[str, bool]:
    """Question id -> right or wrong in the run's last evaluated round (its eval.parquet); {} without one."""
    import pandas as pd

    done = [r["round"] for r in summary["rounds"] if r["round"] >= 1 and r.get("test_accuracy") is not None]
    path = run_dir / f"round_{max(done)}" / "eval.parquet" if done else None
    if path is None or not path.exists():
        return {}
    rows = pd.read_parquet(path, columns=["id", "correct"])
    return {str(q): bool(c) for q, c in zip(rows["id"], rows["correct"])}


def _unfinished(run_dir: Path, summary: dict) -> bool:
    """A run stopped before its last round (its config.yaml plans more rounds than it evaluated): its "final" accuracy
    would be an earlier round's, so a study leaves it out until it is resumed."""
    config = run_dir / "config.yaml"
    if not config.exists():
        return False
    planned = yaml.safe_load(config.read_text()).get("rounds")
    done = [r["round"] for r in summary["rounds"] if r.get("test_accuracy") is not None]
    return planned is not None and max(done, default=0) < planned


def collect(spec: StudySpec) -> dict:
    """{preset: {seed: summary + train_tokens + final_correct}} for every finished run dir."""
    runs: dict[str, dict[int, dict]] = {}
    for preset in spec.presets:
        for seed in spec.seeds:
            path = spec.run_dir(preset, seed) / "summary.json"
            if path.exists():
                summary = json.loads(path.read_text())
                if _unfinished(path.parent, summary):
                    log.info("%s: unfinished (stopped before its last round), left out until resumed", path.parent)
                    continue
                summary["train_tokens"] = _run_tokens(path.parent)
                summary["final_correct"] = final_correct(path.parent, summary)
                runs.setdefault(preset, {})[seed] = summary
    return runs


def _accuracy(summary: dict, k: int) -> float | None:
    return next((r["test_accuracy"] for r in summary["rounds"] if r["round"] == k), None)


# The reflection loss's learning signal per round (summary.json fields): the triplet's Δ and active hinges,
# ranking's rewards/margins and rewards/accuracies.
_SIGNALS = ["reflection_loss", "reflection_gap", "reflection_active", "rewards/margins", "rewards/accuracies"]
# hinge, redi, dpop: the mean token log-likelihoods ℓ̄(t), ℓ̄(m), their gap, the active hinges, dpop's penalty term.
_LIKELIHOOD_SIGNALS = ["loglik_chosen", "loglik_rejected", "loglik_gap", "hinge_active", "dpop_penalty"]


def _signals(by_seed: dict, k: int) -> dict:
    """Per signal, mean ± std over the seeds where round k's loss acted; the round's state when it never did."""
    from ..loop.summary import reflection_state

    rows = [r for s in by_seed.values() for r in s["rounds"] if r["round"] == k]
    states = {reflection_state(r) for r in rows} - {None}
    out: dict = {"state": states.pop() if len(states) == 1 else None}
    for key in _SIGNALS + _LIKELIHOOD_SIGNALS:
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
            "final_correct": {seed: s["final_correct"] for seed, s in by_seed.items() if s.get("final_correct")},
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
                         "outside_noise": n > 1 and abs(t) > critical,
                         **per_question(presets[a].get("final_correct", {}), presets[b].get("final_correct", {}))})
    holm([g for g in gaps if g.get("mcnemar_p") is not None])
    return gaps


def mcnemar_exact(b_only: int, a_only: int) -> float:
    """Two-sided exact McNemar p: of the discordant pairs, how unlikely a split at least this uneven is when
    either preset is as likely to be the one that is right (Binomial(n, 1/2))."""
    n, k = b_only + a_only, min(b_only, a_only)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)  # exact integers, one rounding


def per_question(a: dict[int, dict[str, bool]], b: dict[int, dict[str, bool]], resamples: int = 4000,
                 seed: int = 0) -> dict:
    """The gap b − a paired by question: McNemar on the pooled (seed, question) pairs both runs evaluated, and a
    95% percentile interval of the mean gap from a paired bootstrap over questions (a drawn question brings all
    its seeds, so the seeds' shared questions are not counted as independent). {} without per-question results."""
    pairs = [(s, q) for s in sorted(set(a) & set(b)) for q in sorted(set(a[s]) & set(b[s]))]
    if not pairs:
        return {}
    b_only = sum(b[s][q] and not a[s][q] for s, q in pairs)
    a_only = sum(a[s][q] and not b[s][q] for s, q in pairs)
    by_question: dict[str, list[int]] = {}
    for s, q in pairs:
        by_question.setdefault(q, []).append(int(b[s][q]) - int(a[s][q]))
    sums = [(sum(d), len(d)) for d in by_question.values()]
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        draw = [sums[rng.randrange(len(sums))] for _ in sums]
        means.append(sum(t for t, _ in draw) / sum(n for _, n in draw))
    means.sort()
    return {"pairs": len(pairs), "questions": len(by_question), "b_only": b_only, "a_only": a_only,
            "mcnemar_p": mcnemar_exact(b_only, a_only), "pooled_gap": (b_only - a_only) / len(pairs),
            "bootstrap_ci": (means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1])}


def holm(gaps: list[dict]) -> None:
    """Holm's step-down adjustment of the McNemar p over all the comparisons made (sets `mcnemar_p_holm`)."""
    order = sorted(range(len(gaps)), key=lambda i: gaps[i]["mcnemar_p"])
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(gaps) - rank) * gaps[i]["mcnemar_p"]))
        gaps[i]["mcnemar_p_holm"] = running


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
    likelihood_rows = [(name, k, sig) for name, p in presets.items() for k, sig in p.get("signals", {}).items()
                       if any(key in sig for key in _LIKELIHOOD_SIGNALS)]
    if likelihood_rows:
        lines += ["", ("hinge, redi, dpop: mean token log-likelihoods (nats per token) of the teacher's rationale "
                       "ℓ̄(t) and of the student's mistake ℓ̄(m), their gap, the fraction of active hinges "
                       "(ℓ̄(t) − ℓ̄(m) < δ) and dpop's penalty term max(0, log π_ref(t) − log π(t)) (nats)."), "",
                  "| preset | round | ℓ̄(t) | ℓ̄(m) | ℓ̄(t) − ℓ̄(m) | active hinges | dpop penalty |",
                  "|---|---|---|---|---|---|---|"]
        for name, k, sig in likelihood_rows:
            cells = [_pm(sig.get(key), scale=1.0, digits=3) for key in _LIKELIHOOD_SIGNALS]
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
    by_question = [g for g in agg["gaps"] if g.get("mcnemar_p") is not None]
    if by_question:
        m = len(by_question)
        lines += ["", "## The same gaps paired by question (pooled question × seed pairs)", "",
                  (f"{m} comparison{'s' if m > 1 else ''} (every pair of presets). McNemar's exact test counts the "
                   "pairs only b got right (b only) against those only a got right (a only); Holm's p adjusts it for "
                   f"the {m} comparisons. The 95% interval is a paired bootstrap over questions, each drawn question "
                   "bringing all its seeds. Pooling seeds treats one question's seeds as separate pairs: McNemar "
                   "sees question-level noise, the t-test over seeds above sees training noise; read both."), "",
                  ("| a | b | pairs (questions) | b only | a only | gap (points) | 95% bootstrap interval | McNemar p "
                   "| Holm p | outside noise |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for g in by_question:
            low, high = g["bootstrap_ci"]
            lines.append(f"| {g['a']} | {g['b']} | {g['pairs']} ({g['questions']}) | {g['b_only']} | {g['a_only']} | "
                         f"{g['pooled_gap'] * 100:+.1f} | [{low * 100:+.1f}, {high * 100:+.1f}] | "
                         f"{g['mcnemar_p']:.3g} | {g['mcnemar_p_holm']:.3g} | "
                         f"{'yes' if g['mcnemar_p_holm'] < 0.05 else 'no'} |")
    return "\n".join(lines) + "\n"


# The signal drawn per round beside the accuracy: the triplet's gap, ranking's preference accuracy.
_PLOTTED_SIGNALS = {"reflection_gap": "Δ = cos(a,p) − cos(a,n)", "rewards/accuracies": "rewards/accuracies",
                    "loglik_gap": "ℓ̄(t) − ℓ̄(m)"}


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
        ax.set_ylabel("signal (the legend names it)")  # one label for all kinds would not fit the axis
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
