"""rbyr-ray: tailored multi-round distillation with self-reflection, on Ray.

    import rbyr_ray
    cfg = rbyr_ray.load_config("configs/demo.yaml", ["rounds=2"])
    summary = rbyr_ray.run(cfg)
"""

from __future__ import annotations

from .config import ConfigError, ExperimentConfig, load_config

__version__ = "0.1.0"


def run(config, run_dir=None):
    """Run a multi-round experiment (see rbyr_ray.loop.rounds.run); returns the summary dict."""
    from .loop.rounds import run as _run

    return _run(config, run_dir=run_dir)


def tune(tune_config, overrides=(), resume=None):
    """Run a Ray Tune sweep (see rbyr_ray.tune.sweep.tune)."""
    from .tune.sweep import tune as _tune

    return _tune(tune_config, overrides=overrides, resume=resume)


def study(study_config, overrides=()):
    """Run a study: presets x seeds, compared (see rbyr_ray.study.study.run_study); returns the aggregate."""
    from .study.study import run_study

    return run_study(study_config, overrides=overrides)


__all__ = ["ConfigError", "ExperimentConfig", "__version__", "load_config", "run", "study", "tune"]
