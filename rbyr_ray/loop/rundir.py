"""The run directory: resolved config, a manifest of completed stages, metrics and the summary.

    run_dir/
      config.yaml            resolved config (never holds secrets: keys are named by env variable only)
      manifest.json          completed stages with their metrics and wall seconds
      metrics.jsonl          one line per completed stage
      summary.json           per-round table (rebuilt after every stage)
      teacher_ledger.sqlite  every teacher request and response (shared by resumed runs)
      round_<k>/             exam.parquet, teacher.parquet, train_data.parquet, model/, eval.parquet
      .lock                  one writer at a time: flock'ed by the process writing the run (its pid inside)

A stage is recorded only after its files are written, so a killed run resumes at the first incomplete stage.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import stops
from ..config import MEMORY_KEYS, ConfigError, ExperimentConfig, validate_config
from ..errors import BrokenFile, RunDirBusy

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # run dir -> the open lock file: held until the process ends (or release_run_dir)


def lock_run_dir(path: str | os.PathLike) -> Path:
    """Take the run dir's exclusive lock (again a no-op in the process that holds it), before anything is
    written: a second run, resume, study or sweep trial on the same dir is refused with RunDirBusy, naming the
    holder. An OS lock (flock), so a killed holder releases it with its death; reading a run (report, a fork's
    source) takes none.

    A missing run dir is created to hold the lock file: if another process holds the lock, the dir is that
    process's, so a refusal never leaves a dir of its own behind."""
    path = Path(path)
    key = path.resolve()
    if key in _held:
        return path
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise RunDirBusy(f"{path}: in use by another run ({holder}): one writer per run dir; wait for it to "
                         f"end or stop it, then `rbyr-ray resume {path}`") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[key] = fd
    return path


def release_run_dir(path: str | os.PathLike) -> None:
    """Give the lock back before the process ends (library use; the CLI holds it to the end)."""
    fd = _held.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def _lock_holder(fd: int) -> str:
    """What the holder wrote into the lock file; it writes just after locking, so wait a moment for it."""
    for _ in range(20):
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "pid unknown"


def config_changes(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """Every key (dotted) whose value differs, with both values: ["train.lr: 0.001 → 0.002", ...]."""
    changes: list[str] = []

    def show(value) -> str:  # "text", null: a string that is a number does not pass for one
        return json.dumps(value, ensure_ascii=False)

    def walk(a, b, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(a) + [k for k in b if k not in a]:
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif a != b:
            changes.append(f"{prefix}: {show(a)} → {show(b)}")

    walk(old.model_dump(mode="json", exclude={"run_dir"}), new.model_dump(mode="json", exclude={"run_dir"}), "")
    return changes


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
        """A new run dir for `cfg`, or the existing one when it was made from the same config. A writer takes
        the dir's lock first (lock_run_dir); this only reads an existing run dir's files."""
        path = Path(path)
        existing = path / "config.yaml"
        if existing.exists():
            previous = load_run_config(path)
            changed = config_changes(previous, cfg)
            if changed and all(change.split(": ", 1)[0] in MEMORY_KEYS for change in changed):
                # Memory settings change what a step holds at once, not what it computes (docs/memory.md): the
                # run goes on with them, recorded for later resumes.
                _atomic_write(existing, cfg.to_yaml())
            elif changed:
                raise ConfigError(
                    f"{path}: this run dir was made from a different config ({'; '.join(changed)}); resume it "
                    f"with `rbyr-ray resume {path}` or choose another --run-dir")
        path.mkdir(parents=True, exist_ok=True)
        if not existing.exists():
            _atomic_write(existing, cfg.to_yaml())
        manifest_path = path / "manifest.json"
        manifest = read_manifest(manifest_path) if manifest_path.exists() else {"stages": {}}
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
        with stops.deferred():  # a stop signal waits until both are written
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

    def forget(self, stage_key: str) -> list[str]:
        """Drop a completed stage ("round_2/teacher") and every later one (loop order) from the manifest, so that
        the run computes them again (`rbyr-ray resume D --recompute round_2/teacher`); returns the dropped keys.
        Their files are overwritten when recomputed; the Ray Train checkpoints of a dropped training go now, or
        the new training would resume from them. Teacher answers stay in the ledger."""
        stages = self.manifest["stages"]
        if stage_key not in stages:
            done = ", ".join(sorted(stages, key=lambda key: stage_order(stages[key])))
            raise ValueError(f"--recompute {stage_key}: not a completed stage of {self.path} "
                             f"(completed: {done or 'none'})")
        start = stage_order(stages[stage_key])
        dropped = sorted((key for key, e in stages.items() if stage_order(e) >= start),
                         key=lambda key: stage_order(stages[key]))
        for key in dropped:
            del stages[key]
        for folder in self.path.glob("round_*/ray_train"):
            if stage_order({"round": int(folder.parent.name.removeprefix("round_")), "stage": "train"}) >= start:
                shutil.rmtree(folder)
        _atomic_write(self.path / "manifest.json", json.dumps(self.manifest, indent=1))
        return dropped

    def rounds(self) -> list[int]:
        return sorted({e["round"] for e in self.manifest["stages"].values()})

    def write_summary(self, summary: dict) -> None:
        _atomic_write(self.path / "summary.json", json.dumps(summary, indent=1))


# The files each stage writes into round_<k>/ (what another run needs to take the stage over).
STAGE_FILES = {"exam": ["exam.parquet"], "teacher": ["teacher.parquet"], "train_data": ["train_data.parquet"],
               "train": ["model"], "eval": ["eval.parquet"]}


def stage_order(entry: dict) -> tuple[int, int]:
    """Loop order of a manifest entry: by round, then exam, teacher, train_data, train, eval."""
    return entry["round"], list(STAGE_FILES).index(entry["stage"])


def read_manifest(path: Path) -> dict:
    """manifest.json, or one line naming it when it cannot be read (BrokenFile)."""
    try:
        manifest = json.loads(path.read_text())
        problem = None if isinstance(manifest, dict) and isinstance(manifest.get("stages"), dict) else "no stages"
    except (OSError, ValueError) as exc:  # JSON and encoding errors are ValueErrors
        problem = " ".join(str(exc).split())[:200]
    if problem:
        raise BrokenFile(f"{path}: unreadable manifest ({problem}); move it aside and `rbyr-ray resume "
                         f"{path.parent}` computes every stage again (teacher answers come from the ledger)")
    return manifest


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
