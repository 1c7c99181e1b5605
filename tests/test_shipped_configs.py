"""Every config the project ships loads and validates: experiments, studies (configs/) and sweeps (tune_configs/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rbyr_ray.config import ExperimentConfig, load_config
from rbyr_ray.study.study import load_study
from rbyr_ray.tasks import TASKS
from rbyr_ray.tune.spec import load_tune_config, trial_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TUNE_CONFIGS = sorted((ROOT / "tune_configs").glob("*.yaml"))


def _is_study(path: Path) -> bool:
    return "presets" in (yaml.safe_load(path.read_text()) or {})


def test_the_shipped_configs_are_all_found():
    # A glob that finds nothing would make the tests below vacuous.
    assert len(CONFIGS) >= 17 and len(TUNE_CONFIGS) >= 3
    assert {"demo.yaml", "study_arith.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", [p for p in CONFIGS if not _is_study(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_experiment_config_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig) and (cfg.task.name in TASKS or cfg.task.file) and cfg.rounds >= 1
    if path.parent.name in TASKS:  # configs/<kind>/<task>.yaml is a config for that task
        assert cfg.task.name == path.stem


@pytest.mark.parametrize("path", [p for p in CONFIGS if _is_study(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_study_config_validates_with_every_preset(path: Path):
    spec = load_study(path)
    assert spec.presets and spec.seeds
    for preset in spec.presets:  # each preset's experiment, as the study would run it
        cfg = spec.experiment(preset, spec.seeds[-1])
        assert cfg.seed == spec.seeds[-1] and cfg.teacher.ledger


@pytest.mark.parametrize("path", TUNE_CONFIGS, ids=lambda p: p.name)
def test_tune_config_validates_with_its_space(path: Path):
    spec = load_tune_config(path)  # builds a trial config for each extreme of each searched value
    assert spec.space
    cfg = trial_config(spec, {}, ledger=None, run_dir=None)
    assert cfg.eval.split == "val" and cfg.task.val_fraction > 0
