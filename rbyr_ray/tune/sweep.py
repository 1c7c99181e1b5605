"""Ray Tune sweeps: each trial is a full multi-round run that reports after every round.

    import rbyr_ray
    out = rbyr_ray.tune("tune_configs/demo_sweep.yaml", ["search.num_samples=2"])
    out["best"]["params"], out["best_test_accuracy"], out["teacher"]     # also in <sweep_dir>/sweep_summary.json
    rbyr_ray.tune(None, resume=out["sweep_dir"])                          # continue an interrupted sweep

What happens:
- every trial runs `loop.rounds.run` on base + experiment + its sampled params, evaluated on a validation split
  carved from train (`task.val_fraction`, `eval.split: val`), in its own run dir `<sweep_dir>/trials/<trial_id>`;
- after each round the trial reports {round, val_accuracy, exam_accuracy, teacher_requests, teacher_ledger_hits},
  so ASHA (time_attr = round) can stop weak trials between rounds;
- all trials send teacher requests through one ledger, `<sweep_dir>/teacher_ledger.sqlite`: a request one trial
  paid for is a ledger hit for the others (round 1 asks the same CoT prompts in every trial);
- with `share_stages` (default), a trial first takes over the stages an earlier trial computed exactly as it
  would (loop.fork): trials differing only in λ/margin share round 1 and round 2's exam, teacher and data,
  and every trial shares the untuned evaluation; the table counts teacher requests of taken-over stages once;
- afterwards: results.csv / results.md / sweep.png, the selected trial's experiment as best_config.yaml (test
  split), and that trial's final model evaluated once on the test split, reported apart from the selection.

Resources: a trial actor holds only `trial_cpus` (0.1 by default); the stages inside it (exam actors, Ray Train
workers, teacher actors) ask Ray for their own. On 2 cores, run one trial at a time (max_concurrent_trials: 1).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, ExperimentConfig
from .results import TRIAL_FILE, select_best, teacher_totals, trial_table, write_plot, write_table
from .space import make_scheduler, make_searcher, num_samples, tune_space
from .spec import TuneSpec, load_tune_config, trial_config

log = logging.getLogger(__name__)

SPEC_FILE = "tune_spec.json"  # the resolved tune config, so `--resume` needs only the sweep dir
LEDGER_FILE = "teacher_ledger.sqlite"
TUNE_DIR = "tune"  # Ray Tune's own experiment state, inside the sweep dir


def tune(tune_config: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (),
         resume: str | os.PathLike | None = None) -> dict:
    """Run a sweep from a tune config (or continue the one in `resume`); returns sweep_summary.json's content.

    >>> out = tune("tune_configs/demo_sweep.yaml", ["search.num_samples=1"])   # doctest: +SKIP
    >>> out["best"]["trial_id"], out["best_test_accuracy"], out["teacher"]    # doctest: +SKIP
    """
    if resume is not None:
        if tune_config is not None or overrides:
            raise ConfigError("--resume continues a sweep with its own config; give no tune config or overrides")
        spec, sweep_dir = _load_sweep(Path(resume))
    else:
        if tune_config is None:
            raise ConfigError("give a tune config (e.g. tune_configs/demo_sweep.yaml) or --resume SWEEP_DIR")
        spec = load_tune_config(tune_config, overrides)
        sweep_dir = spec.sweep_dir()
        if (sweep_dir / TUNE_DIR).exists():
            raise ConfigError(f"{sweep_dir} already holds a sweep; continue it with "
                              f"`rbyr-ray tune --resume {sweep_dir}`, or set another name= or storage_path=")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SPEC_FILE).write_text(spec.model_dump_json(indent=1))

    start = time.time()
    grid = _fit(spec, sweep_dir, restore=resume is not None)
    errors = [str(e) for e in grid.errors]
    unfinished = unfinished_trials(grid)
    # An interrupted sweep's selection is not final: the test split waits for the --resume that finishes it.
    summary = collect(spec, sweep_dir, evaluate_on_test_split=not unfinished)
    summary["wall_s"] = round(time.time() - start, 1)
    summary["errors"] = errors
    summary["unfinished_trials"] = unfinished
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    _print(summary)
    return summary


def unfinished_trials(grid) -> list[str]:
    """Trials Tune left pending or running: the sweep was interrupted (Ctrl-C) and `--resume` continues it."""
    # ResultGrid exposes no trial status; its analysis holds the trials (guarded: a private attribute).
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]


def _load_sweep(path: Path) -> tuple[TuneSpec, Path]:
    sweep_dir = path.parent if path.name == TUNE_DIR else path
    spec_path = sweep_dir / SPEC_FILE
    if not spec_path.exists():
        raise FileNotFoundError(f"{path}: not a sweep dir (no {SPEC_FILE}); give the folder `rbyr-ray tune` printed")
    spec = TuneSpec.model_validate_json(spec_path.read_text())
    return spec, sweep_dir.resolve()


# ---------------------------------------------------------------------------------------------- the trial


def run_trial(config: dict[str, Any], spec: dict) -> None:
    """The Tune trainable: one full multi-round run with the sampled `config`, reporting after every round."""
    import ray.tune

    from ..loop.fork import take_over
    from ..loop.rounds import run
    from ..loop.rundir import lock_run_dir

    tuned = TuneSpec.model_validate(spec)
    # Tune starts trials in their own working dir; the experiment's relative paths mean the sweep's.
    os.chdir(tuned.cwd)
    _quiet_trial_logs()
    sweep_dir = tuned.sweep_dir()
    trial_id = ray.tune.get_context().get_trial_id()
    run_dir = sweep_dir / "trials" / trial_id
    params = {key: _plain(value) for key, value in config.items()}
    cfg = trial_config(tuned, params, ledger=sweep_dir / LEDGER_FILE, run_dir=run_dir)
    cfg = cfg.model_copy(update={"name": f"{tuned.name}-{trial_id}"})
    lock_run_dir(run_dir)  # before trial.json: one writer per trial dir
    _write_trial_info(run_dir, trial_id, params, cfg, "running")
    if tuned.share_stages:
        take_over([d for d in (sweep_dir / "trials").iterdir() if d.name != trial_id], cfg, run_dir)

    def report(row: dict) -> None:
        metrics = {"round": row["round"], "val_accuracy": row["test_accuracy"],
                   "exam_accuracy": row.get("exam_accuracy"), "teacher_requests": row.get("teacher_requests"),
                   "teacher_ledger_hits": row.get("teacher_ledger_hits")}
        ray.tune.report({k: v for k, v in metrics.items() if v is not None})

    try:
        run(cfg, run_dir, on_round=report)
    except Exception:
        _write_trial_info(run_dir, trial_id, params, cfg, "error")
        raise
    # Not reached when Tune stops the trial inside report() (ASHA, or max_t reached: SystemExit); trial.json then
    # still says "running", which results.trial_row reads as stopped or done by the rounds it completed.
    _write_trial_info(run_dir, trial_id, params, cfg, "done")


def _write_trial_info(run_dir: Path, trial_id: str, params: dict, cfg: ExperimentConfig, status: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / TRIAL_FILE
    started = json.loads(path.read_text())["started"] if path.exists() else time.time()
    info = {"trial_id": trial_id, "params": params, "rounds": cfg.rounds, "status": status, "started": started}
    tmp = path.with_name(f".{TRIAL_FILE}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """numpy scalars (what Tune's samplers return) as Python values, so YAML and JSON take them."""
    return value.item() if hasattr(value, "item") else value


def _quiet_trial_logs() -> None:
    """One line per stage from the loop; no Ray Data progress output per dataset (there are several per round)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    pkg = logging.getLogger("rbyr_ray")
    if not pkg.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        pkg.addHandler(handler)
        pkg.setLevel(logging.INFO)


# ---------------------------------------------------------------------------------------------- Ray Tune


def _trainable(spec: TuneSpec):
    from ray import tune as ray_tune

    resources = {"cpu": spec.trial_cpus, "gpu": spec.trial_gpus}
    return ray_tune.with_resources(ray_tune.with_parameters(run_trial, spec=spec.model_dump()), resources)


def _fit(spec: TuneSpec, sweep_dir: Path, restore: bool):
    import ray
    from ray import tune as ray_tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ..ray_utils import init_ray

    probe = trial_config(spec, {k: p.extremes()[0] for k, p in spec.space.items()}, ledger=None, run_dir=None)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray(probe.ray)
    check_resources(spec, probe, ray.cluster_resources())
    trainable = _trainable(spec)
    searcher = make_searcher(spec)
    # Tune's variant generator limits concurrency itself (make_searcher passes it); TuneConfig's limit is for
    # Searchers such as Optuna, and only warns when given with the variant generator.
    concurrency = None if isinstance(searcher, BasicVariantGenerator) else spec.max_concurrent_trials
    if restore:
        log.info("resuming sweep %s", sweep_dir)
        tuner = ray_tune.Tuner.restore(str(sweep_dir / TUNE_DIR), trainable=trainable, resume_errored=True)
    else:
        tuner = ray_tune.Tuner(
            trainable,
            param_space=tune_space(spec),
            tune_config=ray_tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=searcher,
                                            scheduler=make_scheduler(spec), num_samples=num_samples(spec),
                                            max_concurrent_trials=concurrency),
            run_config=ray_tune.RunConfig(name=TUNE_DIR, storage_path=str(sweep_dir), verbose=1,
                                          failure_config=ray_tune.FailureConfig(max_failures=spec.max_failures)),
        )
    return tuner.fit()


def check_resources(spec: TuneSpec, cfg: ExperimentConfig, cluster: dict) -> None:
    """Fail before the sweep when a trial's stages cannot get their CPUs/GPUs next to the trial actor
    (they would wait forever); warn when concurrent trials will queue on each other's stages."""
    need_cpu = max(cfg.exam.replicas * cfg.exam.cpus_per_replica,
                   cfg.train.num_workers * cfg.train.cpus_per_worker,
                   cfg.teacher.replicas * 0.25)  # teacher/stage.py asks 0.25 CPU per actor
    need_gpu = max(cfg.exam.replicas * cfg.exam.gpus_per_replica,
                   cfg.train.num_workers * (cfg.train.resources_per_worker.get("GPU", 1.0) if cfg.train.use_gpu else 0))
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if spec.trial_cpus + need_cpu > cpus or spec.trial_gpus + need_gpu > gpus:
        raise ConfigError(
            f"{spec.source}: a trial holds {spec.trial_cpus} CPU / {spec.trial_gpus} GPU and its largest stage asks "
            f"{need_cpu} CPU / {need_gpu} GPU, but the cluster has {cpus} CPU / {gpus} GPU; lower trial_cpus, "
            f"exam.cpus_per_replica or train.cpus_per_worker")
    per_trial = spec.trial_cpus + need_cpu
    if spec.max_concurrent_trials * per_trial > cpus:
        log.warning("%d concurrent trials need up to %.2f CPUs, the cluster has %.0f: their stages will queue",
                    spec.max_concurrent_trials, spec.max_concurrent_trials * per_trial, cpus)


# ---------------------------------------------------------------------------------------------- results


def collect(spec: TuneSpec, sweep_dir: Path, evaluate_on_test_split: bool = True) -> dict:
    """Table, best config, test accuracy of the selection, teacher totals and plot, from the trials' run dirs."""
    table = trial_table(sweep_dir)
    best_row = select_best(table, spec.metric, spec.mode)
    summary: dict = {"sweep_dir": str(sweep_dir), "metric": spec.metric, "mode": spec.mode, "trials": len(table),
                     "teacher": teacher_totals(table), "best": None, "best_test_accuracy": None,
                     "best_test_questions": None}
    if best_row is not None:
        params = {k: _plain(best_row[k]) for k in spec.space}
        summary["best"] = {"trial_id": best_row["trial_id"], "params": params,
                           "metric_value": best_row["metric_value"], "run_dir": best_row["run_dir"],
                           "rounds_done": int(best_row["rounds_done"])}
        best_cfg = trial_config(spec, params, ledger=sweep_dir / LEDGER_FILE, run_dir=None, split="test")
        best_cfg = best_cfg.model_copy(update={"name": f"{spec.name}-best"})
        summary["best_config"] = str(write_best_config(best_cfg, sweep_dir / "best_config.yaml", spec, summary))
        if spec.evaluate_best_on_test and evaluate_on_test_split:
            summary.update(evaluate_on_test(best_cfg, Path(best_row["run_dir"]), sweep_dir))
    csv_path, md_path = write_table(table, sweep_dir, summary)
    summary["table_csv"], summary["table_md"] = str(csv_path), str(md_path)
    plot = write_plot(table, sweep_dir / "sweep.png", summary["best"]["trial_id"] if summary["best"] else None)
    summary["plot"] = str(plot) if plot else None
    return summary


def write_best_config(cfg: ExperimentConfig, path: Path, spec: TuneSpec, summary: dict) -> Path:
    """The selected trial's full experiment, evaluated on the test split: `rbyr-ray run best_config.yaml`."""
    best = summary["best"]
    header = (f"# Selected by the sweep {spec.name} ({spec.source}) on {spec.metric} ({spec.mode}, validation split):\n"
              f"# trial {best['trial_id']}, {', '.join(f'{k}={v}' for k, v in best['params'].items())}.\n"
              f"# Full resolved experiment; eval.split is test again. The teacher ledger is the sweep's, so a rerun\n"
              f"# pays only for requests no trial made. Run: rbyr-ray run {path}\n")
    data = cfg.model_dump(mode="json")
    data.pop("run_dir", None)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


def evaluate_on_test(cfg: ExperimentConfig, trial_dir: Path, sweep_dir: Path) -> dict:
    """The selected trial's final model on the test split (greedy, like the loop's evaluation), evaluated once
    after selection; a second call for the same model reuses the result."""
    from ..student.exam import run_exam
    from ..tasks import load_task

    manifest = json.loads((trial_dir / "manifest.json").read_text())
    trained = sorted((e for e in manifest["stages"].values() if e["stage"] == "train"), key=lambda e: e["round"])
    if not trained:
        return {}
    model_dir = trained[-1]["metrics"]["model_dir"]
    cache = sweep_dir / "best_test_eval.json"
    if cache.exists():
        previous = json.loads(cache.read_text())
        if previous.get("model_dir") == model_dir:
            return {k: previous[k] for k in ("best_test_accuracy", "best_test_questions")}
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    task = load_task(cfg.task, seed=cfg.seed)
    result = run_exam(task.test, model_dir, cfg, answer_type=task.answer_type, samples=1, greedy=True,
                      max_new_tokens=cfg.eval.max_new_tokens or task.max_new_tokens,
                      out_path=sweep_dir / "best_test_eval.parquet", seed=cfg.seed, task=task.prompts)
    out = {"best_test_accuracy": result.accuracy, "best_test_questions": len(task.test)}
    cache.write_text(json.dumps({**out, "model_dir": model_dir}))
    return out


def _print(summary: dict) -> None:
    best = summary.get("best")
    lines = [f"sweep {summary['sweep_dir']}: {summary['trials']} trials"]
    if best:
        lines.append(f"selected trial {best['trial_id']} ({best['params']}): {summary['metric']} "
                     f"{best['metric_value']:.4f} on the validation split")
    if summary.get("best_test_accuracy") is not None:
        lines.append(f"its test accuracy (reported separately): {summary['best_test_accuracy']:.4f}")
    if summary.get("unfinished_trials"):
        lines.append(f"interrupted with {len(summary['unfinished_trials'])} unfinished trial(s); continue with: "
                     f"rbyr-ray tune --resume {summary['sweep_dir']}")
    t = summary["teacher"]
    lines.append(f"teacher, whole sweep: {t['requests_sent']} requests sent, {t['ledger_hits']} ledger hits")
    lines.append(f"table: {summary.get('table_md')}  best config: {summary.get('best_config')}  "
                 f"plot: {summary.get('plot')}")
    print("\n".join(lines), flush=True)
