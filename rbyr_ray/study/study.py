"""A study: several experiment presets, each run with several seeds, then compared.

    # configs/study_arith.yaml
    name: study-arith
    out: runs/study-arith              # one run dir per preset and seed: <out>/<preset>/seed_<s>
    seeds: [0, 1, 2]
    presets:                           # name: experiment config, relative to this file
      std-cot: baselines/std_cot.yaml
      multi-round: baselines/multiround_no_reflection.yaml
      full: demo.yaml
    overrides: []                      # key=value applied to every preset

    results = run_study("configs/study_arith.yaml")     # or: rbyr-ray study configs/study_arith.yaml

Runs are ordinary run dirs, so an interrupted study continues where it stopped (finished runs are kept, a
partial one resumes at its first incomplete stage). Presets that differ only in the reflection loss or the
number of rounds share the stages they would compute identically (see loop.fork): the untuned evaluation and
round 1 are computed once per seed. All runs share one teacher ledger, so no teacher request is paid twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import ConfigError, ExperimentConfig, load_config, parse_override

log = logging.getLogger(__name__)


STUDY_KEYS = {"seeds", "out", "name"}


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "study"
    out: str = "runs/study"
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    presets: dict[str, str] = Field(min_length=1)
    overrides: list[str] = []
    source: str = "<study config>"

    def out_dir(self) -> Path:
        return Path(self.out)

    def run_dir(self, preset: str, seed: int) -> Path:
        return self.out_dir() / preset / f"seed_{seed}"

    def experiment(self, preset: str, seed: int) -> ExperimentConfig:
        ledger = str((self.out_dir() / "teacher_ledger.sqlite").resolve())
        return load_config(self.presets[preset], [*self.overrides, f"seed={seed}", f"name={self.name}-{preset}-s{seed}",
                                                  f"teacher.ledger={ledger}"])


def load_study(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read and check a study YAML: every preset config must load (with the study's overrides)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such study config")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    # `seeds=[0,1]`, `out=DIR`, `name=N` set the study itself; every other key=value each preset's experiment.
    experiment = []
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] in STUDY_KEYS and len(keys) == 1:
            data[keys[0]] = value
        else:
            experiment.append(text)
    data["overrides"] = [*data.get("overrides", []), *experiment]
    try:
        spec = StudySpec(**data, source=str(p))
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid study config:\n  " + "\n  ".join(problems)) from None
    spec.presets = {name: str((p.parent / cfg).resolve()) for name, cfg in spec.presets.items()}
    for name in spec.presets:
        try:
            spec.experiment(name, spec.seeds[0])
        except ConfigError as exc:
            raise ConfigError(f"{path}: presets.{name}: {exc}") from None
    return spec


def run_study(config: str | os.PathLike | StudySpec, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Run every (seed, preset) not finished yet, then write results.md, results.json and results.png."""
    from ..loop.fork import take_over
    from ..loop.rounds import run
    from .results import write_results

    spec = config if isinstance(config, StudySpec) else load_study(config, overrides)
    spec.out_dir().mkdir(parents=True, exist_ok=True)
    started = time.time()
    total = len(spec.seeds) * len(spec.presets)
    for i, (seed, preset) in enumerate(((s, p) for s in spec.seeds for p in spec.presets), start=1):
        cfg, run_dir = spec.experiment(preset, seed), spec.run_dir(preset, seed)
        if (run_dir / "summary.json").exists() and _finished(run_dir, cfg):
            log.info("study %s: [%d/%d] %s seed %d finished earlier", spec.name, i, total, preset, seed)
            continue
        # Any earlier run may give stages: same seed (round 1 and more), another seed (the untuned evaluation).
        others = [spec.run_dir(p, s) for s in spec.seeds for p in spec.presets if (p, s) != (preset, seed)]
        take_over(others, cfg, run_dir)
        log.info("study %s: [%d/%d] %s seed %d (%.0f min so far)", spec.name, i, total, preset, seed,
                 (time.time() - started) / 60)
        run(cfg, run_dir=run_dir)
    return write_results(spec, study_wall_s=time.time() - started)


def _finished(run_dir: Path, cfg: ExperimentConfig) -> bool:
    """Its last round evaluated. (A run stopped by patience is run again: the loop skips its done stages and
    stops at the same round.)"""
    summary = json.loads((run_dir / "summary.json").read_text())
    return any(r["round"] >= cfg.rounds and r.get("test_accuracy") is not None for r in summary["rounds"])
