"""From a TuneSpec to Ray Tune objects: the parameter space, the search algorithm and the scheduler.

    param_space = tune_space(spec)             # {"train.lr": tune.loguniform(1e-4, 1e-3), ...}
    searcher = make_searcher(spec)             # BasicVariantGenerator (grid, random) or OptunaSearch
    scheduler = make_scheduler(spec)           # FIFOScheduler or ASHAScheduler(time_attr="round")
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError
from .spec import ParamSpec, TuneSpec, max_rounds


def optuna_available() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


def _domain(key: str, param: ParamSpec, spec: TuneSpec) -> Any:
    from ray import tune

    algorithm = spec.search.algorithm
    if param.kind in ("grid", "choice"):
        values = param.grid if param.kind == "grid" else param.choice
        if algorithm == "grid" or (param.kind == "grid" and algorithm == "random"):
            return tune.grid_search(values)
        # Optuna samples every parameter itself; a grid becomes a categorical it explores.
        return tune.choice(values)
    if algorithm == "grid":
        raise ConfigError(f"{spec.source}: space.{key}: a {param.kind} range cannot be enumerated by "
                          f"search.algorithm: grid; use grid values or search.algorithm: random")
    lo, hi = getattr(param, param.kind)
    if param.kind == "uniform":
        return tune.uniform(lo, hi)
    if param.kind == "loguniform":
        return tune.loguniform(lo, hi)
    return tune.randint(lo, hi + 1)  # the tune config's upper bound is inclusive, Tune's is not


def tune_space(spec: TuneSpec) -> dict[str, Any]:
    """The Ray Tune param_space, keyed by the experiment's dotted keys.

    >>> from rbyr_ray.tune.spec import validate_tune_spec
    >>> spec = validate_tune_spec({"space": {"train.lr": {"grid": [1e-4, 5e-4]}}})
    >>> tune_space(spec)
    {'train.lr': {'grid_search': [0.0001, 0.0005]}}
    """
    return {key: _domain(key, param, spec) for key, param in spec.space.items()}


def make_searcher(spec: TuneSpec):
    """Grid and random: Tune's variant generator (seeded); Optuna's TPE when `optuna` is installed."""
    if spec.search.algorithm == "optuna":
        if not optuna_available():
            raise ConfigError(f"{spec.source}: search.algorithm: optuna needs the optuna package "
                              f"(pip install optuna), or use grid / random")
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=spec.metric, mode=spec.mode, seed=spec.search.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search.seed, max_concurrent=spec.max_concurrent_trials)


def make_scheduler(spec: TuneSpec):
    """FIFO runs every trial to its last round; ASHA stops weak trials between rounds (time_attr = round)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.name == "fifo":
        return FIFOScheduler()
    max_t = spec.scheduler.max_t or max_rounds(spec)
    return ASHAScheduler(time_attr="round", max_t=max_t, grace_period=min(spec.scheduler.grace_period, max_t),
                         reduction_factor=spec.scheduler.reduction_factor)


def num_samples(spec: TuneSpec) -> int:
    """Tune's num_samples: grid search repeats the whole grid, random/optuna draw that many trials."""
    return spec.search.num_samples
