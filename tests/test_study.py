"""Studies: forking run dirs at the stages two presets compute identically, and the study's statistics.

The fork tests build run dirs with real files and manifests (what the loop writes), without running models;
the last test runs a tiny real study (heavy tier).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rbyr_ray.config import ConfigError, load_config
from rbyr_ray.loop.fork import fork_run, shareable_stages
from rbyr_ray.loop.rundir import RunDir, load_run_config
from rbyr_ray.study.results import aggregate, collect, holm, mcnemar_exact, per_question, plot, to_markdown
from rbyr_ray.study.study import StudySpec, load_study

REPO = Path(__file__).resolve().parents[1]
FULL = ["train.reflection.weight=0.5", "rounds=2"]


def _source_run(path: Path, triplets_round1: int = 0, overrides=FULL, negatives_round1: int | None = None) -> RunDir:
    """A finished 2-round run dir as the loop leaves it: stage files, then the manifest entry."""
    cfg = load_config(REPO / "configs/demo.yaml", overrides)
    rd = RunDir.create_or_resume(path, cfg)
    stages = [(0, "eval"), (1, "teacher"), (1, "train_data"), (1, "train"), (1, "eval"),
              (2, "exam"), (2, "teacher"), (2, "train_data"), (2, "train"), (2, "eval")]
    for k, stage in stages:
        d = rd.round_dir(k)
        metrics: dict = {"accuracy": 0.1 * k} if stage == "eval" else {}
        if stage == "train":
            (d / "model").mkdir()
            (d / "model" / "model.safetensors").write_bytes(f"weights of round {k}".encode())
            metrics = {"model_dir": str((d / "model").resolve()), "tokens": 1000 * k}
        else:
            (d / f"{stage}.parquet").write_text(f"{stage} of round {k}")
        if stage == "train_data":
            negatives = triplets_round1 if negatives_round1 is None else negatives_round1
            metrics = {"items": 10, "items_with_triplet": triplets_round1 if k == 1 else 6,
                       "items_with_negative": negatives if k == 1 else 8}
        if stage == "teacher":
            metrics = {"teacher_requests": 10 * k, "teacher_ledger_hits": k}
        rd.record(k, stage, metrics, wall_s=1.0 + k)
    return rd


def test_lambda_only_presets_share_round_1_and_round_2_data(tmp_path: Path):
    src = _source_run(tmp_path / "full")
    multi = load_config(REPO / "configs/demo.yaml", ["train.reflection.weight=0.0", "rounds=2"])
    shared = shareable_stages(multi, load_run_config(src.path), src)
    assert shared == [(0, "eval"), (1, "teacher"), (1, "train_data"), (1, "train"), (1, "eval"),
                      (2, "exam"), (2, "teacher"), (2, "train_data")]  # round 2 trains on triplets: lambda acts

    taken = fork_run(src.path, multi, tmp_path / "multi")
    assert taken == shared
    dst = RunDir.create_or_resume(tmp_path / "multi", multi)
    model = tmp_path / "multi/round_1/model/model.safetensors"
    assert model.read_bytes() == b"weights of round 1"
    assert os.path.samefile(model, tmp_path / "full/round_1/model/model.safetensors")  # a hard link, not a copy
    assert dst.done(1, "train")["metrics"]["model_dir"] == str((tmp_path / "multi/round_1/model").resolve())
    assert dst.done(1, "train")["adopted_from"] == str(src.path)
    assert dst.done(2, "train") is None and not (tmp_path / "multi/round_2/model").exists()
    assert (tmp_path / "multi/round_2/train_data.parquet").read_text() == "train_data of round 2"


def test_one_round_preset_shares_everything_up_to_its_last_round(tmp_path: Path):
    src = _source_run(tmp_path / "full")
    std_cot = load_config(REPO / "configs/baselines/std_cot.yaml")
    assert shareable_stages(std_cot, load_run_config(src.path), src) == [
        (0, "eval"), (1, "teacher"), (1, "train_data"), (1, "train"), (1, "eval")]


def test_round_1_triplets_make_lambda_matter_there(tmp_path: Path):
    src = _source_run(tmp_path / "full", triplets_round1=3)
    multi = load_config(REPO / "configs/demo.yaml", ["train.reflection.weight=0.0", "rounds=2"])
    assert shareable_stages(multi, load_run_config(src.path), src)[-1] == (1, "train_data")


def test_ranking_and_triplet_share_training_only_where_neither_loss_can_act(tmp_path: Path):
    ranking_keys = [*FULL, "train.reflection.kind=ranking", "train.reflection.beta=0.2"]
    ranking = load_config(REPO / "configs/demo.yaml", ranking_keys)
    data = [(0, "eval"), (1, "teacher"), (1, "train_data")]
    # Round 1 without student mistakes: neither loss acts, so round 1's training is L_lm in both.
    src = _source_run(tmp_path / "none")
    assert shareable_stages(ranking, load_run_config(src.path), src) == [
        *data, (1, "train"), (1, "eval"), (2, "exam"), (2, "teacher"), (2, "train_data")]
    # Mistakes without triplets (one distinct teacher rationale): the triplet cannot act, ranking can.
    src = _source_run(tmp_path / "pairs", triplets_round1=0, negatives_round1=4)
    assert shareable_stages(ranking, load_run_config(src.path), src) == data
    multi = load_config(REPO / "configs/demo.yaml", ["train.reflection.weight=0.0", "rounds=2"])
    assert shareable_stages(multi, load_run_config(src.path), src)[:4] == [*data, (1, "train")]  # the triplet: no
    # The training data are the same rows whichever loss reads them; beta alone changes the ranking's training.
    other_beta = load_config(REPO / "configs/demo.yaml", [*FULL, "train.reflection.kind=ranking"])
    src = _source_run(tmp_path / "ranked", overrides=ranking_keys, negatives_round1=4)
    assert shareable_stages(other_beta, load_run_config(src.path), src) == data


def test_any_other_difference_shares_only_what_round_0_computes_alike(tmp_path: Path):
    src = _source_run(tmp_path / "full")
    # Training and teacher settings: round 0 (the untuned student) does not read them.
    for override in ["train.lr=1e-4", "train.reflection.max_negatives=1", "teacher.samples=3"]:
        other = load_config(REPO / "configs/demo.yaml", [*FULL, override])
        assert shareable_stages(other, load_run_config(src.path), src) == [(0, "eval")], override
    # Exam, evaluation, student or task settings: not even round 0.
    for override in ["exam.samples=3", "eval.max_new_tokens=20", "student.dtype=float32", "task.arith.n_test=50"]:
        other = load_config(REPO / "configs/demo.yaml", [*FULL, override])
        assert shareable_stages(other, load_run_config(src.path), src) == [], override


def test_another_seed_shares_only_the_untuned_greedy_evaluation(tmp_path: Path):
    src = _source_run(tmp_path / "full")
    other_seed = load_config(REPO / "configs/demo.yaml", [*FULL, "seed=1"])
    assert shareable_stages(other_seed, load_run_config(src.path), src) == [(0, "eval")]
    # ... unless the seed carves the validation split that evaluation reads.
    val = [*FULL, "task.val_fraction=0.25", "eval.split=val"]
    src_val = _source_run(tmp_path / "val", overrides=val)
    other_val = load_config(REPO / "configs/demo.yaml", [*val, "seed=1"])
    assert shareable_stages(other_val, load_run_config(src_val.path), src_val) == []
    lr_val = load_config(REPO / "configs/demo.yaml", [*val, "train.lr=1e-4"])
    assert shareable_stages(lr_val, load_run_config(src_val.path), src_val) == [(0, "eval")]


def test_fork_never_overwrites_a_stage_the_run_computed_itself(tmp_path: Path):
    src = _source_run(tmp_path / "full")
    multi = load_config(REPO / "configs/demo.yaml", ["train.reflection.weight=0.0", "rounds=2"])
    own = RunDir.create_or_resume(tmp_path / "multi", multi)
    (own.round_dir(0) / "eval.parquet").write_text("computed here")
    own.record(0, "eval", {"accuracy": 0.05}, 3.0)
    own.record(1, "teacher", {}, 3.0)  # ... and round 1 too: not a prefix of what the source can give
    own.record(1, "eval", {"accuracy": 0.5}, 3.0)
    assert fork_run(src.path, multi, tmp_path / "multi") == []
    assert (tmp_path / "multi/round_0/eval.parquet").read_text() == "computed here"


def test_a_sweep_counts_a_taken_over_stage_in_the_trial_that_computed_it(tmp_path: Path):
    from rbyr_ray.loop.fork import take_over
    from rbyr_ray.tune.results import trial_table

    trials = tmp_path / "sweep" / "trials"
    _source_run(trials / "a")
    multi = load_config(REPO / "configs/demo.yaml", ["train.reflection.weight=0.0", "rounds=2"])
    source, taken = take_over([trials / "not-started", trials / "a"], multi, trials / "b")
    assert source == trials / "a" and taken[-1] == (2, "train_data") and len(taken) == 8
    for i, (name, weight) in enumerate([("a", 0.5), ("b", 0.0)]):
        (trials / name / "trial.json").write_text(json.dumps(
            {"trial_id": name, "params": {"train.reflection.weight": weight}, "rounds": 2, "status": "running",
             "started": i}))
    table = trial_table(tmp_path / "sweep").set_index("trial_id")
    # Round 1's and round 2's teacher requests were sent by trial a; b took them over and sent none.
    assert table.loc["a", "teacher_requests"] == 30 and table.loc["a", "teacher_ledger_hits"] == 3
    assert table.loc["b", "teacher_requests"] == 0 and table.loc["b", "teacher_ledger_hits"] == 0
    assert (table.loc["a", "stages_shared"], table.loc["b", "stages_shared"]) == (0, 8)
    assert table.loc["b", "val_r1"] == table.loc["a", "val_r1"] == pytest.approx(0.1)
    assert table.loc["b", "wall_s"] == 0 and table.loc["a", "wall_s"] > 0
    assert (table.loc["a", "status"], table.loc["b", "status"]) == ("done", "stopped")  # b has no round-2 eval


def _summary(untuned: float, accs: list[float], tokens: int) -> dict:
    rounds = [{"round": 0, "test_accuracy": untuned}] + [
        {"round": k, "test_accuracy": a, "teacher_requests": 10, "teacher_ledger_hits": 5} for k, a in enumerate(accs, 1)]
    return {"untuned_test_accuracy": untuned, "final_test_accuracy": accs[-1], "total_wall_s": 100.0 * len(accs),
            "rounds": rounds, "train_tokens": tokens}


def test_study_statistics_are_per_round_means_and_paired_gaps(tmp_path: Path):
    spec = StudySpec(name="s", out=str(tmp_path), seeds=[0, 1, 2], presets={"a": "x.yaml", "b": "y.yaml"})
    runs = {"a": {0: _summary(0.05, [0.40], 100), 1: _summary(0.05, [0.44], 100), 2: _summary(0.05, [0.42], 100)},
            "b": {0: _summary(0.05, [0.40, 0.50], 300), 1: _summary(0.05, [0.44, 0.55], 300),
                  2: _summary(0.05, [0.42, 0.54], 300)}}
    agg = aggregate(spec, runs)
    a, b = agg["presets"]["a"], agg["presets"]["b"]
    assert a["per_round"][1]["mean"] == pytest.approx(0.42) and a["per_round"][1]["std"] == pytest.approx(0.02)
    assert b["per_round"][2]["mean"] == pytest.approx(0.53)
    assert agg["untuned"] == (pytest.approx(0.05), 0.0)
    assert b["teacher_requests"][0] == 30 and b["train_tokens"][0] == 300
    (gap,) = agg["gaps"]
    diffs = [0.10, 0.11, 0.12]  # b - a per seed
    assert gap["mean"] == pytest.approx(0.11) and gap["std"] == pytest.approx(0.01)
    assert gap["t"] == pytest.approx(0.11 / (0.01 / math.sqrt(3))) and gap["outside_noise"] is True
    assert sum(diffs) / 3 == pytest.approx(gap["mean"])
    text = to_markdown(spec, agg)
    assert "| b | 3 | 5.0 ± 0.0 | 42.0 ± 2.0 | 53.0 ± 2.6 | 53.0 ± 2.6 |" in text
    assert "| a | b | 3 | +11.0 ± 1.0 |" in text


def test_a_gap_inside_seed_noise_is_called_so(tmp_path: Path):
    spec = StudySpec(name="s", out=str(tmp_path), seeds=[0, 1, 2], presets={"a": "x.yaml", "b": "y.yaml"})
    runs = {"a": {s: _summary(0.05, [acc], 1) for s, acc in enumerate([0.40, 0.50, 0.45])},
            "b": {s: _summary(0.05, [acc], 1) for s, acc in enumerate([0.48, 0.46, 0.47])}}
    (gap,) = aggregate(spec, runs)["gaps"]
    assert gap["outside_noise"] is False and abs(gap["t"]) < gap["critical"]


def test_study_reports_the_reflection_signal_per_round(tmp_path: Path):
    spec = StudySpec(name="s", out=str(tmp_path), seeds=[0, 1], presets={"multi": "x.yaml", "triplet": "y.yaml"})

    def run(acc: float, gap1: float | None, weight: float = 0.5) -> dict:
        summary = _summary(0.05, [acc, acc + 0.02], 1)
        for r, gap in zip(summary["rounds"][1:], [gap1, 0.30]):
            r |= {"lm_loss": 0.4, "reflection_weight": weight, "reflection_kind": "triplet",
                  "reflection_items": 0 if gap is None or weight == 0 else 20,
                  "reflection_loss": None if gap is None or weight == 0 else 1.0 - gap,
                  "reflection_gap": None if weight == 0 else gap, "reflection_active": None if weight == 0 else 1.0}
        return summary

    runs = {"multi": {0: run(0.40, 0.1, weight=0.0), 1: run(0.42, 0.1, weight=0.0)},
            "triplet": {0: run(0.40, None), 1: run(0.44, None)}}
    agg = aggregate(spec, runs)
    assert agg["presets"]["triplet"]["signals"][2]["reflection_gap"] == (pytest.approx(0.30), 0.0)
    text = to_markdown(spec, agg)
    assert "| multi | 1 | λ = 0 |" in text and "| triplet | 1 | no triplets |" in text
    assert "| triplet | 2 | 0.700 ± 0.000 | 0.300 ± 0.000 | 1.000 ± 0.000 | - | - |" in text
    # results.png draws the signal per round beside the accuracy, but only where some loss acted.
    from PIL import Image

    with Image.open(plot(agg, tmp_path / "with.png")) as im:
        with_signal = im.size
    only_lambda_0 = aggregate(spec, {"multi": runs["multi"]})
    with Image.open(plot(only_lambda_0, tmp_path / "without.png")) as im:
        without_signal = im.size
    assert with_signal[0] > 1.5 * without_signal[0] and with_signal[1] == without_signal[1]


def test_study_config_errors_name_the_file_and_preset(tmp_path: Path):
    bad = tmp_path / "study.yaml"
    bad.write_text(yaml.safe_dump({"presets": {"full": "nope.yaml"}}))
    with pytest.raises(ConfigError, match=r"study.yaml: presets.full: .*nope.yaml"):
        load_study(bad)
    bad.write_text(yaml.safe_dump({"presets": {"full": str(REPO / "configs/demo.yaml")}, "seed": [0]}))
    with pytest.raises(ConfigError, match=r"study.yaml: invalid study config:\n  seed: Extra inputs"):
        load_study(bad)
    spec = load_study(REPO / "configs/study_arith.yaml")
    assert list(spec.presets) == ["std-cot", "multi-round", "full"] and spec.seeds == [0, 1, 2]
    cfgs = {name: spec.experiment(name, 1) for name in spec.presets}
    assert cfgs["std-cot"].rounds == 1 and cfgs["std-cot"].train.reflection.weight == 0
    assert cfgs["full"].train.reflection.weight == 0.5 and cfgs["full"].seed == 1
    assert len({c.teacher.ledger for c in cfgs.values()}) == 1  # one ledger for the study


@pytest.mark.slow
@pytest.mark.heavy
def test_tiny_study_end_to_end(tmp_path: Path):
    """Two presets x one seed, real runs: std-cot takes over round 0-1 of the full run, results are written."""
    tiny = ["task.arith.n_train=8", "task.arith.n_test=8", "task.arith.max_steps=1", "exam.max_new_tokens=16",
            "eval.max_new_tokens=16", "train.batch_size=4", "train.lora.r=4", "tracking.wandb=false"]
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny", "out": str(tmp_path / "out"), "seeds": [0], "overrides": tiny,
        "presets": {"full": str(REPO / "configs/demo.yaml"), "std-cot": str(REPO / "configs/baselines/std_cot.yaml")}}))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    proc = subprocess.run([str(Path(sys.executable).parent / "rbyr-ray"), "study", str(study)], env=env,
                          capture_output=True, text=True, timeout=1500, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "out/std-cot/seed_0/manifest.json").read_text())
    adopted = {key for key, e in manifest["stages"].items() if e.get("adopted_from")}
    assert adopted == {"round_0/eval", "round_1/teacher", "round_1/train_data", "round_1/train", "round_1/eval"}
    full = json.loads((tmp_path / "out/full/seed_0/summary.json").read_text())
    std = json.loads((tmp_path / "out/std-cot/seed_0/summary.json").read_text())
    assert std["final_test_accuracy"] == full["rounds"][1]["test_accuracy"]
    results = (tmp_path / "out/results.md").read_text()
    assert "| full | 1 |" in results and "| std-cot | 1 |" in results
    assert (tmp_path / "out/results.png").stat().st_size > 1000


# ------------------------------------------------------------------------------ paired by question (issue 21)


def _correct(right: set[int], n: int = 40) -> dict[str, bool]:
    return {f"q{i}": i in right for i in range(n)}


def test_mcnemar_on_pooled_question_seed_pairs_has_the_known_answer(tmp_path: Path):
    """5 seeds x 40 questions. Per seed a is right on q0-q19; b on q1-q23: b alone on 4 questions, a alone on 1.
    Pooled: 20 pairs only b got right, 5 only a. Exact McNemar: 2 * P(X <= 5), X ~ Binomial(25, 1/2)
    = 2 * (1 + 25 + 300 + 2300 + 12650 + 53130) / 2**25."""
    seeds = [0, 1, 2, 3, 4]
    spec = StudySpec(name="s", out=str(tmp_path), seeds=seeds, presets={"a": "x.yaml", "b": "y.yaml"})
    a_right, b_right = set(range(20)), set(range(1, 24))
    runs = {"a": {s: _summary(0.05, [0.5], 1) | {"final_correct": _correct(a_right)} for s in seeds},
            "b": {s: _summary(0.05, [0.575], 1) | {"final_correct": _correct(b_right)} for s in seeds}}
    (gap,) = aggregate(spec, runs)["gaps"]
    assert (gap["pairs"], gap["questions"], gap["b_only"], gap["a_only"]) == (200, 40, 20, 5)
    assert gap["mcnemar_p"] == pytest.approx(2 * 68406 / 2**25, rel=1e-12)  # 0.00408
    assert gap["mcnemar_p_holm"] == gap["mcnemar_p"]  # one comparison
    assert gap["pooled_gap"] == pytest.approx(15 / 200)
    # The seed t-test cannot see it (every seed has the same gap: std 0), the pooled pairs can.
    assert gap["mean"] == pytest.approx(0.075) and gap["std"] == pytest.approx(0.0, abs=1e-12)
    # The bootstrap over questions counts 40 questions, not 200 pairs: its interval holds the gap and is wide.
    low, high = gap["bootstrap_ci"]
    assert low < 0.075 < high and high - low > 0.1
    assert per_question({s: _correct(a_right) for s in seeds}, {s: _correct(b_right) for s in seeds}) == {
        k: gap[k] for k in ("pairs", "questions", "b_only", "a_only", "mcnemar_p", "pooled_gap", "bootstrap_ci")}
    text = to_markdown(spec, aggregate(spec, runs))
    assert "1 comparison (every pair of presets)" in text
    assert "| a | b | 200 (40) | 20 | 5 | +7.5 |" in text


def test_identical_runs_and_a_clear_gain_over_400_questions():
    seeds = range(5)
    same = per_question({s: _correct({1, 2, 3}, 400) for s in seeds}, {s: _correct({1, 2, 3}, 400) for s in seeds})
    assert (same["b_only"], same["a_only"], same["mcnemar_p"], same["bootstrap_ci"]) == (0, 0, 1.0, (0.0, 0.0))
    # b right on 40 more of 400 questions in every seed, a on 4 more: both tests put it outside noise.
    a = {s: _correct(set(range(100)) | set(range(140, 144)), 400) for s in seeds}
    b = {s: _correct(set(range(140)), 400) for s in seeds}
    gain = per_question(a, b)
    assert (gain["b_only"], gain["a_only"]) == (200, 20) and gain["mcnemar_p"] < 1e-30
    assert 0.0 < gain["bootstrap_ci"][0] < 0.09 < gain["bootstrap_ci"][1]


def test_holm_adjusts_for_every_comparison_made():
    gaps = [{"mcnemar_p": p} for p in (0.04, 0.01, 0.03)]
    holm(gaps)
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert [g["mcnemar_p_holm"] for g in gaps] == pytest.approx([0.06, 0.03, 0.06])
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)


def test_collect_reads_each_runs_final_round_per_question(tmp_path: Path):
    import pandas as pd

    spec = StudySpec(name="s", out=str(tmp_path), seeds=[0], presets={"a": "x.yaml"})
    run_dir = spec.run_dir("a", 0)
    for k, right in [(1, [True, False]), (2, [False, True])]:
        (run_dir / f"round_{k}").mkdir(parents=True)
        pd.DataFrame({"id": ["q0", "q1"], "correct": right}).to_parquet(run_dir / f"round_{k}" / "eval.parquet")
    (run_dir / "manifest.json").write_text(json.dumps({"stages": {}}))
    (run_dir / "summary.json").write_text(json.dumps(_summary(0.0, [0.5, 0.5], 0)))
    assert collect(spec)["a"][0]["final_correct"] == {"q0": False, "q1": True}  # round 2, the last evaluated
    # A run stopped before its last round (its config plans 3): its "final" would be round 2's, so it is left out.
    (run_dir / "config.yaml").write_text("rounds: 3\n")
    assert collect(spec) == {}
    (run_dir / "config.yaml").write_text("rounds: 2\n")
    assert collect(spec)["a"][0]["final_test_accuracy"] == 0.5


def test_presets_differing_in_round_2s_objective_share_the_sft_round_and_round_2s_data(tmp_path: Path):
    """train.reflection.start_round=2: round 1 is λ = 0 at train.lr whatever the kind, λ or reflection lr, so it
    is shared even with student mistakes in round 1; round 2 trains apart where the kind, λ or lr differ."""
    study3 = [*FULL, "train.reflection.start_round=2", "train.reflection.lr=2e-4"]
    src = _source_run(tmp_path / "hinge", triplets_round1=3, negatives_round1=4,
                      overrides=[*study3, "train.reflection.kind=hinge", "train.reflection.margin=0.1"])
    up_to_round_2_data = [(0, "eval"), (1, "teacher"), (1, "train_data"), (1, "train"), (1, "eval"),
                          (2, "exam"), (2, "teacher"), (2, "train_data")]
    for other in (["train.reflection.kind=dpop"], ["train.reflection.kind=redi", "train.reflection.weight=0.8"],
                  ["train.reflection.weight=0.0"], ["train.reflection.kind=hinge", "train.reflection.margin=0.1",
                                                    "train.reflection.lr=1e-3"]):
        cfg = load_config(REPO / "configs/demo.yaml", [*study3, *other])
        assert shareable_stages(cfg, load_run_config(src.path), src) == up_to_round_2_data, other
    # The same objective and rate share round 2's training too.
    same = load_config(REPO / "configs/demo.yaml", [*study3, "train.reflection.kind=hinge", "train.reflection.margin=0.1"])
    assert shareable_stages(same, load_run_config(src.path), src)[-2:] == [(2, "train"), (2, "eval")]
    # The paper's schedule (the loss from round 1, start_round 1) acts on round 1's mistakes: round 1 trains apart.
    paper = load_config(REPO / "configs/demo.yaml", [*FULL, "train.reflection.kind=hinge", "train.reflection.margin=0.1"])
    assert shareable_stages(paper, load_run_config(src.path), src) == up_to_round_2_data[:3]
    # λ = 0 at a different round-2 rate: round 1 shared, round 2's training not (the rate differs, no loss acts).
    zero = [*FULL, "train.reflection.start_round=2", "train.reflection.weight=0.0"]
    src0 = _source_run(tmp_path / "zero", overrides=[*zero, "train.reflection.lr=1e-4"])
    cfg = load_config(REPO / "configs/demo.yaml", [*zero, "train.reflection.lr=3e-4"])
    assert shareable_stages(cfg, load_run_config(src0.path), src0) == up_to_round_2_data
