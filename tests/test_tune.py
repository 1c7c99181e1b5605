"""Ray Tune sweeps: the tune config's validation (fast), and one tiny real sweep end to end (slow).

The sweep: 2 trials (grid over the learning rate), 2 rounds each, on 12 synthetic arithmetic questions (4 carved
out as the validation split), SmolLM2-135M with LoRA r=4, the local solver teacher, on the machine's 2 CPUs, one
trial at a time. Both trials ask the teacher the same round-1 CoT prompts, so the second one's round 1 is all
ledger hits; the untuned evaluation does not read the learning rate, so the second trial takes it over.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

import rbyr_ray
from rbyr_ray.config import ConfigError
from rbyr_ray.tune.space import make_scheduler, tune_space
from rbyr_ray.tune.spec import load_tune_config, trial_config

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "base": str(ROOT / "configs" / "demo.yaml"),
    "experiment": {
        "rounds": 2,
        # float32: this machine emulates bf16 (far slower); fixed, so `auto` cannot change what the test runs.
        "student": {"dtype": "float32"},
        # One-step questions: rationales of ~10 tokens ("3 * 4 = 12."), so 16 new tokens suffice.
        "task": {"arith": {"n_train": 12, "n_test": 8, "max_steps": 1}, "val_fraction": 0.34},
        "exam": {"samples": 2, "max_new_tokens": 16, "round0": False, "batch_size": 16},
        "eval": {"max_new_tokens": 16, "batch_size": 16},
        "train": {"epochs": 1, "batch_size": 4, "warmup_steps": 1, "reflection": {"max_rationale_tokens": 32},
                  "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "tracking": {"wandb": False},
    },
    "space": {"train.lr": {"grid": [1.0e-3, 2.0e-3]}},
    "search": {"algorithm": "grid"},
    "scheduler": {"name": "asha", "grace_period": 2},  # ASHA wired in, but both trials run both rounds
    "metric": "val_accuracy",
    "mode": "max",
    "max_concurrent_trials": 1,
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({**data, "storage_path": str(tmp_path / "sweeps")}))
    return path


def test_tune_config_validates_keys_and_builds_val_trials(tmp_path):
    spec = load_tune_config(write(tmp_path, TINY), ["search.num_samples=1", "space.train.lr={grid: [1.0e-4]}",
                                                    "space.train.reflection.weight={grid: [0.0, 0.5]}"])
    assert tune_space(spec) == {"train.reflection.weight": {"grid_search": [0.0, 0.5]},
                                "train.lr": {"grid_search": [1.0e-4]}}
    cfg = trial_config(spec, {"train.reflection.weight": 0.5, "train.lr": 1e-4}, ledger="/x/l.sqlite", run_dir="/x/t")
    assert (cfg.eval.split, cfg.task.val_fraction, cfg.teacher.ledger) == ("val", 0.34, "/x/l.sqlite")
    assert cfg.train.reflection.weight == 0.5 and cfg.rounds == 2
    assert make_scheduler(spec)._max_t == 2  # ASHA's max_t defaults to the rounds
    # A space key that is no experiment key, a bad value, an unknown tune key: each names the key and file.
    for overrides, needle in [(["space.train.lrr={grid: [1]}"], "train.lrr"),
                              (["space.train.lr={grid: [-1]}"], "train.lr"),
                              (["scheduler.nme=asha"], "scheduler.nme")]:
        with pytest.raises(ConfigError, match=needle) as err:
            load_tune_config(write(tmp_path, TINY), overrides)
        assert "tune.yaml" in str(err.value)
    # The validation split is forced even when the experiment has none.
    no_val = {**TINY, "experiment": {**TINY["experiment"], "task": {"arith": {"n_train": 12}}}}
    assert trial_config(load_tune_config(write(tmp_path, no_val)), {}, ledger=None, run_dir=None).task.val_fraction > 0


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.timeout(1800)
def test_tiny_sweep_end_to_end(tmp_path):
    import ray

    try:
        out = rbyr_ray.tune(write(tmp_path, TINY))
        sweep = Path(out["sweep_dir"])
        assert out["errors"] == [] and out["trials"] == 2

        # The table: one row per trial with its lr and per-round validation accuracy, as CSV and markdown.
        table = pd.read_csv(sweep / "results.csv")
        assert sorted(table["train.lr"]) == [1.0e-3, 2.0e-3]
        assert {"val_r0", "val_r1", "val_r2", "teacher_requests", "teacher_ledger_hits"} <= set(table.columns)
        assert table["val_r2"].notna().all() and (table["rounds_done"] == 2).all()
        assert set(table["status"]) == {"done"}
        md = (sweep / "results.md").read_text()
        assert md.count("\n| ") >= 3 and "train.lr" in md  # header + 2 trials
        assert (sweep / "sweep.png").stat().st_size > 0

        # The best config: a full experiment that loads as is, back on the test split.
        best = rbyr_ray.load_config(sweep / "best_config.yaml")
        assert best.eval.split == "test" and best.rounds == 2
        assert best.train.lr == out["best"]["params"]["train.lr"]
        assert out["best_test_accuracy"] is not None and out["best_test_questions"] == 8

        # The shared ledger: the second trial's round 1 sent nothing; all its rationales came from the ledger
        # (hits count samples: 8 training questions x k=2).
        first, second = (json.loads((Path(d) / "summary.json").read_text()) for d in table["run_dir"])
        r1_first = next(r for r in first["rounds"] if r["round"] == 1)
        r1_second = next(r for r in second["rounds"] if r["round"] == 1)
        assert r1_first["teacher_requests"] == 8 and r1_first["teacher_ledger_hits"] == 0
        assert r1_second["teacher_requests"] == 0 and r1_second["teacher_ledger_hits"] == 8 * 2
        # The second trial took the untuned evaluation over from the first (same files, not recomputed).
        manifests = [json.loads((Path(d) / "manifest.json").read_text())["stages"] for d in table["run_dir"]]
        assert manifests[1]["round_0/eval"]["adopted_from"] == table["run_dir"][0]
        assert "adopted_from" not in manifests[1]["round_1/teacher"]
        assert list(table["stages_shared"]) == [0, 1] and table["val_r0"][0] == table["val_r0"][1]
        assert out["teacher"] == {"requests_sent": int(table["teacher_requests"].sum()),
                                  "ledger_hits": int(table["teacher_ledger_hits"].sum())}

        # Resuming a finished sweep reruns nothing and rebuilds the same results.
        again = rbyr_ray.tune(None, resume=sweep)
        assert again["best"]["trial_id"] == out["best"]["trial_id"] and again["teacher"] == out["teacher"]
    finally:
        ray.shutdown()
