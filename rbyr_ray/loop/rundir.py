"""The run directory: resolved config, a manifest of completed stages, metrics and the summary.

    run_dir/
      config.yaml            resolved config (never holds secrets: keys are named by env variable only)
      manifest.json          completed stages with their metrics and wall seconds
      metrics.jsonl          one line per completed stage
      summary.json           per-round table (rebuilt after every stage)
      teacher_ledger.sqlite  every teacher request and response (shared by resumed runs)
      round_<k>/             exam.parquet, teacher.parquet, train_data.parquet, model/, eval.parquet

A stage is recorded only after its files are written, so a killed run resumes at the first incomplete stage.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ConfigError, ExperimentConfig, validate_config


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class RunDir:
    path: Path
    manifest: dict = field(default_factory=dict)

    @classmethod
    def create_or_resume(cls, path: str | os.PathLike, cfg: ExperimentConfig) -> RunDir:
        """A new run dir for `cfg`, or the existing one when it was made from the same config."""
        path = Path(path)
        existing = path / "config.yaml"
        if existing.exists():
            previous = load_run_config(path)
            if previous.model_dump(exclude={"run_dir"}) != cfg.model_dump(exclude={"run_dir"}):
                raise ConfigError(
                    f"{path}: this run dir was made from a different config; resume it with "
                    f"`rbyr-ray resume {path}` or choose another --run-dir")
        path.mkdir(parents=True, exist_ok=True)
        if not existing.exists():
            _atomic_write(existing, cfg.to_yaml())
        manifest_path = path / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"stages": {}}
        return cls(path, manifest)

    def round_dir(self, k: int) -> Path:
        d = self.path / f"round_{k}"
        d.mkdir(exist_ok=True)
        return d

    def done(self, k: int, stage: str) -> dict | None:
        return self.manifest["stages"].get(f"round_{k}/{stage}")

    def record(self, k: int, stage: str, metrics: dict, wall_s: float) -> dict:
        entry = {"round": k, "stage": stage, "wall_s": round(wall_s, 2), "metrics": metrics,
                 "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return self._store(entry)

    def _store(self, entry: dict) -> dict:
        """A completed stage into the manifest (atomically) and metrics.jsonl."""
        self.manifest["stages"][f"round_{entry['round']}/{entry['stage']}"] = entry
        _atomic_write(self.path / "manifest.json", json.dumps(self.manifest, indent=1))
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        return entry

    def adopt(self, src: RunDir, stages: list[tuple[int, str]]) -> None:
        """Take over completed stages of another run dir: their files (hard links where the file system
        allows: stage outputs are never modified in place) and their manifest entries, model paths rewritten."""
        for k, stage in stages:
            entry = json.loads(json.dumps(src.done(k, stage)))
            for name in STAGE_FILES[stage]:
                source, target = src.path / f"round_{k}" / name, self.round_dir(k) / name
                if source.is_dir():
                    shutil.copytree(source, target, copy_function=_link_or_copy, dirs_exist_ok=True)
                elif source.exists():
                    _link_or_copy(source, target)
            if "model_dir" in entry["metrics"]:
                entry["metrics"]["model_dir"] = str((self.round_dir(k) / "model").resolve())
            entry["adopted_from"] = str(src.path)
            self._store(entry)

    def rounds(self) -> list[int]:
        return sorted({e["round"] for e in self.manifest["stages"].values()})

    def write_summary(self, summary: dict) -> None:
        _atomic_write(self.path / "summary.json", json.dumps(summary, indent=1))


# The files each stage writes into round_<k>/ (what another run needs to take the stage over).
STAGE_FILES = {"exam": ["exam.parquet"], "teacher": ["teacher.parquet"], "train_data": ["train_data.parquet"],
               "train": ["model"], "eval": ["eval.parquet"]}


def _link_or_copy(source, target) -> None:
    if os.path.exists(target):
        os.remove(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def load_run_config(path: str | os.PathLike) -> ExperimentConfig:
    config_path = Path(path) / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{path}: not a run directory (no config.yaml)")
    return validate_config(yaml.safe_load(config_path.read_text()) or {}, str(config_path))
