"""The tune config: which experiment, which parameters to sweep, how to search and when to stop trials.

    # tune_configs/demo_sweep.yaml
    base: ../configs/demo.yaml             # the experiment, relative to this file
    experiment: {rounds: 2}                # overrides of the base experiment
    space:
      train.reflection.weight: {grid: [0.0, 0.5]}
      train.lr: {loguniform: [1.0e-4, 1.0e-3]}
    search: {algorithm: random, num_samples: 4, seed: 0}
    scheduler: {name: asha, grace_period: 1}
    metric: val_accuracy
    mode: max

    spec = load_tune_config("tune_configs/demo_sweep.yaml", ["search.num_samples=2", "rounds=1"])
    cfg = trial_config(spec, {"train.reflection.weight": 0.5}, ledger="sweep/ledger.sqlite", run_dir="sweep/t0")

Every space key is checked against ExperimentConfig by building trial configs from its extreme values, so a
typo fails before Ray starts, naming the tune file and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    deep_merge,
    parse_override,
    read_yaml_config,
    validate_config,
)

# Metrics every trial reports after each round (see sweep._report).
METRICS = ("val_accuracy", "exam_accuracy")
DEFAULT_VAL_FRACTION = 0.2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    """One swept parameter: exactly one of the distributions.

    {grid: [0.0, 0.5]} every value (a grid over all grid parameters); {choice: [4, 8]} one at random;
    {uniform: [lo, hi]}, {loguniform: [lo, hi]} floats; {randint: [lo, hi]} integers lo..hi inclusive.
    """

    grid: list[Any] | None = Field(None, min_length=1)
    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ParamSpec:
        given = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform, randint (got {given or 'none'})")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None and bounds[0] > bounds[1]:
            raise ValueError(f"lower bound {bounds[0]} > upper bound {bounds[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def extremes(self) -> list[Any]:
        """Values that, when valid, make every value of the parameter valid (used to check the space)."""
        values = getattr(self, self.kind)
        return list(values)


class SearchSpec(_Strict):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    # grid: repeats of the whole grid; random/optuna: trials drawn (times the grid, when grid values are given).
    num_samples: int = Field(1, ge=1)
    seed: int | None = 0


class SchedulerSpec(_Strict):
    name: Literal["fifo", "asha"] = "fifo"
    max_t: int | None = Field(None, ge=1, description="rounds; None = the most rounds a trial can run")
    grace_period: int = Field(1, ge=1, description="rounds every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1)


class TuneSpec(_Strict):
    """A validated tune config; `base` is already resolved to an absolute path."""

    name: str = "sweep"
    base: str | None = None
    experiment: dict[str, Any] = {}
    space: dict[str, ParamSpec] = Field(min_length=1)
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    metric: Literal["val_accuracy", "exam_accuracy"] = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    storage_path: str = "runs/tune"  # the sweep lives in <storage_path>/<name>
    max_concurrent_trials: int = Field(1, ge=1)
    # What the trial actor itself holds. Small on purpose: the loop's stages (exam actors, Ray Train workers,
    # teacher actors) ask for their own CPUs/GPUs next to it, and Ray Data stalls when none are left.
    trial_cpus: float = Field(0.1, ge=0)
    trial_gpus: float = Field(0.0, ge=0)
    # Model selection needs a held-out split; used when the experiment does not set task.val_fraction.
    val_fraction: float = Field(DEFAULT_VAL_FRACTION, gt=0, lt=1)
    evaluate_best_on_test: bool = True
    # A trial takes over the stages an earlier trial computed exactly as it would (loop.fork): λ-only
    # differences share round 1 and round 2's exam/teacher/data; any difference shares round 0.
    share_stages: bool = True
    max_failures: int = Field(0, ge=0, description="retries of a failed trial (the loop resumes its run dir)")
    source: str = "<tune config>"  # the file this came from, for messages
    cwd: str = Field(default_factory=os.getcwd)  # relative experiment paths resolve here, in every trial

    def sweep_dir(self) -> Path:
        root = Path(self.storage_path)
        return (root if root.is_absolute() else Path(self.cwd) / root) / self.name


TOP_KEYS = set(TuneSpec.model_fields) - {"source", "cwd"}


def _apply_tune_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """`search.num_samples=4` sets the tune config; `space.train.lr={grid: [1e-4]}` one parameter (its key is
    dotted); any other key (`rounds=1`, `task.arith.n_train=30`) overrides the experiment."""
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "space" and len(path) > 1:
            data.setdefault("space", {})[".".join(path[1:])] = value
        elif path[0] in TOP_KEYS and path[0] != "experiment":
            apply_overrides(data, [text])
        else:
            rest = path[1:] if path[0] == "experiment" else path
            if not rest:
                raise ConfigError(f"override {text!r}: name a key inside the experiment, e.g. experiment.rounds=2")
            apply_overrides(data.setdefault("experiment", {}), [f"{'.'.join(rest)}={text.split('=', 1)[1]}"])
    return data


def load_tune_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> TuneSpec:
    """Read, override and validate a tune config; the experiment and every space value are checked too."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such tune config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    data = _apply_tune_overrides(data, overrides)
    if isinstance(data.get("base"), str):
        data["base"] = str((p.parent / data["base"]).resolve())
    data["source"] = str(path)
    return validate_tune_spec(data)


def validate_tune_spec(data: dict) -> TuneSpec:
    source = data.get("source", "<tune config>")
    try:
        spec = TuneSpec.model_validate(data)
    except ValidationError as exc:
        problems = [f"{source}: {'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                    + ("" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})")
                    for err in exc.errors()]
        raise ConfigError("invalid tune config:\n  " + "\n  ".join(problems)) from None
    check_space(spec)
    return spec


def base_experiment(spec: TuneSpec) -> dict:
    """The experiment before sampling: the base file (with its own `base:` chain) and the tune file's overrides."""
    data: dict = {}
    if spec.base is not None:
        data, _ = read_yaml_config(spec.base)
    return deep_merge(data, spec.experiment)


def trial_config(spec: TuneSpec, params: dict[str, Any], *, ledger: str | os.PathLike | None,
                 run_dir: str | os.PathLike | None, split: Literal["val", "test"] = "val") -> ExperimentConfig:
    """The experiment one trial runs: base + experiment + sampled params, evaluated on the validation split
    (model selection never sees the test split), with the sweep's shared teacher ledger.

    `split="test"` gives the same experiment as a ready-to-run config that reports test accuracy.
    """
    data = base_experiment(spec)
    for key, value in params.items():
        set_dotted(data, key, value)
    task = data.setdefault("task", {})
    if isinstance(task, dict) and not task.get("val_fraction"):
        task["val_fraction"] = spec.val_fraction
    if isinstance(data.setdefault("eval", {}), dict):
        data["eval"]["split"] = split
    if ledger is not None and isinstance(data.setdefault("teacher", {}), dict):
        data["teacher"]["ledger"] = str(ledger)
    if run_dir is not None:
        data["run_dir"] = str(run_dir)
    where = f"{spec.source} (base {spec.base})" if spec.base else spec.source
    # Errors in a sampled key or value name it as the space entry that set it.
    overrides = tuple(f"{k}={v!r}" for k, v in params.items())
    return validate_config(data, where, overrides=overrides)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """set_dotted(d, "train.reflection.weight", 0.5) sets d["train"]["reflection"]["weight"], making sections."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def check_space(spec: TuneSpec) -> None:
    """Build a trial config for each extreme value of each parameter, so a bad key or value fails now."""
    first = {key: p.extremes()[0] for key, p in spec.space.items()}
    try:
        trial_config(spec, first, ledger=None, run_dir=None)
        for key, param in spec.space.items():
            for value in param.extremes()[1:]:
                trial_config(spec, {**first, key: value}, ledger=None, run_dir=None)
    except ConfigError as exc:
        raise ConfigError(f"{spec.source}: a trial's experiment (base + experiment + space values) is invalid: "
                          f"{exc}") from None


def max_rounds(spec: TuneSpec) -> int:
    """The most rounds any trial can run (ASHA's max_t by default)."""
    rounds = spec.space.get("rounds")
    if rounds is not None:
        return int(max(rounds.extremes()))
    return trial_config(spec, {}, ledger=None, run_dir=None).rounds
