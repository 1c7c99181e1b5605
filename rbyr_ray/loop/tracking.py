"""Experiment tracking: Weights & Biases (offline by default) next to the run dir's metrics.jsonl."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..config import ExperimentConfig

log = logging.getLogger(__name__)


class Tracker:
    """Logs round metrics to wandb when enabled; a no-op otherwise. Never sees secrets (the config has none).

    wandb starts with the first metrics logged, so a resumed run with nothing left to compute starts nothing."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path):
        self.run = None
        self.cfg, self.run_dir = cfg, run_dir
        self.pending = bool(cfg.tracking.wandb) and cfg.tracking.wandb_mode != "disabled"

    def _start(self) -> None:
        self.pending = False
        cfg, run_dir = self.cfg, self.run_dir
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed; tracking only to %s/metrics.jsonl", run_dir)
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        # A stable id per run dir, so a resumed run continues the same wandb run.
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
        self.run = wandb.init(project=cfg.tracking.project, entity=cfg.tracking.entity, name=cfg.name,
                              id=run_id, resume="allow", dir=str(run_dir), mode=cfg.tracking.wandb_mode,
                              config=cfg.model_dump(mode="json"), tags=cfg.tracking.tags)

    def log(self, round_k: int, metrics: dict) -> None:
        if self.pending:
            self._start()
        if self.run is not None:
            flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.run.log({"round": round_k, **flat})

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
