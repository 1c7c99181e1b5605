"""The multi-round loop, top to bottom as METHOD.md "One round" reads: exam -> teacher -> train -> evaluate.

    import rbyr_ray
    summary = rbyr_ray.run("configs/demo.yaml")                 # or an ExperimentConfig
    summary["rounds"][-1]["test_accuracy"]

Every stage writes its files into `run_dir/round_<k>/` and is then recorded in the manifest; a stage found
in the manifest is not run again, so `rbyr-ray resume RUN_DIR` continues at the first incomplete stage.
Teacher requests go through the run's ledger, so a resumed teacher stage sends only what is missing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .. import stops
from ..config import ExperimentConfig, TaskConfig, load_config, round_train
from ..errors import Stopped
from ..ray_utils import init_ray
from ..tasks import Record, TaskData, load_task
from .files import check_stage_outputs, read_parquet
from .rundir import RunDir, load_run_config, lock_run_dir
from .summary import build_summary, print_round_table
from .tracking import Tracker

log = logging.getLogger(__name__)


def run(config: ExperimentConfig | str | Path, run_dir: str | Path | None = None,
        on_round: Callable[[dict], None] | None = None, recompute: str | None = None) -> dict:
    """Run (or continue) a multi-round experiment; returns the summary written to summary.json.

    `on_round(row)` is called after every evaluated round (rounds already done included, on a resume) with
    that round's summary row; Ray Tune trials report through it. `recompute` ("round_2/teacher") drops that
    completed stage and every later one first, so they run again. A completed stage whose output is broken
    (a truncated or foreign Parquet file, a model folder without weights) stops the run before anything runs,
    naming the file and that flag.
    """
    cfg = config if isinstance(config, ExperimentConfig) else load_config(config)
    run_dir = Path(run_dir or cfg.run_dir or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    lock_run_dir(run_dir)  # before anything is written: one writer per run dir
    rd = RunDir.create_or_resume(run_dir, cfg)
    log.info("run dir: %s", rd.path)
    if recompute:
        log.info("recomputing %s", ", ".join(rd.forget(recompute)))
    check_stage_outputs(rd)
    try:
        # Ray and the tracker start with the first stage that computes (or a task read through Ray Data), so that
        # resuming a finished run (or one whose remaining stages are all done) waits for neither.
        tracker = Tracker(cfg, rd.path)
        try:
            _rounds(cfg, rd, tracker, on_round)
        finally:
            tracker.close()
    except KeyboardInterrupt as exc:  # a stop signal (rbyr_ray.stops), also as ray.get or Ray Train raise it
        raise _resumable(stops.stopped(exc), rd) from None
    summary = build_summary(rd)
    print_round_table(summary)
    from .report import write_report

    write_report(rd.path, summary)
    return summary


def _resumable(stop: Stopped, rd: RunDir) -> Stopped:
    stop.resume_hint = stop.resume_hint or f"`rbyr-ray resume {rd.path}` continues"
    return stop


def resume(run_dir: str | Path, recompute: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Continue a run from its own resolved config at the first incomplete stage (after dropping `recompute`
    and the stages after it, see run). `overrides` may change memory settings only (config.MEMORY_KEYS)."""
    return run(resume_config(run_dir, overrides), run_dir=run_dir, recompute=recompute)


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The run dir's config with `overrides` of memory settings applied; any other key is refused (it would
    change what the completed stages computed)."""
    from ..config import MEMORY_KEYS, ConfigError, apply_overrides, validate_config

    cfg = load_run_config(run_dir)
    others = [o for o in overrides if o.split("=", 1)[0].strip() not in MEMORY_KEYS]
    if others:
        raise ConfigError(f"resume {run_dir}: {', '.join(others)}: resume changes memory settings only "
                          f"({', '.join(MEMORY_KEYS)}); other keys would change the results: start a new run dir")
    if not overrides:
        return cfg
    data = apply_overrides(cfg.model_dump(mode="json"), list(overrides))
    return validate_config(data, str(Path(run_dir) / "config.yaml"), None, tuple(overrides))


def _rounds(cfg: ExperimentConfig, rd: RunDir, tracker: Tracker, on_round: Callable[[dict], None] | None) -> None:
    from ..student.models import resolve_model_dir

    if _reads_through_ray(cfg.task):
        init_ray(cfg.ray)  # Ray Data reads the task's URIs on the run's cluster, not a default one it would start
    task = load_task(cfg.task, seed=cfg.seed)
    answer_type = task.answer_type
    records = {r.id: r for r in task.train + task.test + task.val}
    eval_split = task.split(cfg.eval.split)
    model = resolve_model_dir(cfg.student.model, cfg.student.cache_dir, cfg.student.allow_hub_download,
                              cfg.student.dtype)
    stage = _StageRunner(cfg, rd, tracker, task)

    # Round 0: the untuned student (its test accuracy is the baseline; its exam gives round 1's negatives).
    if cfg.exam.round0:
        stage.exam(0, task.train, model, answer_type)
    best = stage.evaluate(0, eval_split, model, answer_type)["accuracy"]
    rounds_without_gain = 0

    for k in range(1, cfg.rounds + 1):
        # 1. Exam: the student samples rationales for every training question; wrong ones are its mistakes.
        exam_round = k if k >= 2 else 0
        if k >= 2:
            stage.exam(k, task.train, model, answer_type)
        mistakes = read_mistakes(rd, exam_round, cfg.train.reflection.max_negatives, cfg.exam.mistakes)

        # 2. Teacher: round 1 covers the whole training set with few-shot CoT; later rounds only the
        #    questions with mistakes, with the feedback prompt (wrong rationale + hint).
        asked = task.train if k == 1 else [r for r in task.train if r.id in mistakes]
        teacher = stage.teacher(k, asked, None if k == 1 else mistakes, answer_type, model)

        # 3. Train, continuing from the previous round's weights, on the accepted teacher rationales. A round
        #    with none (a weak teacher, or no mistakes to correct) trains on nothing: the student keeps its
        #    weights, and the round is still evaluated and the loop goes on.
        if stage.train_data(k, records, mistakes, answer_type, model)["items"]:
            model = stage.train(k, model)
        else:
            log.warning("round %d: no training: the teacher gave no accepted rationale (%s asked; %s rejected for the "
                        "answer, %s for a false step); the student keeps its weights", k, len(asked),
                        teacher.get("teacher_rejected_answer"), teacher.get("teacher_rejected_steps"))

        # 4. Evaluate on the test split with greedy decoding.
        accuracy = stage.evaluate(k, eval_split, model, answer_type)["accuracy"]
        summary = build_summary(rd)
        rd.write_summary(summary)
        if on_round is not None:
            on_round(next(r for r in summary["rounds"] if r["round"] == k))
        if accuracy > best:
            best, rounds_without_gain = accuracy, 0
        else:
            rounds_without_gain += 1
        if cfg.patience and rounds_without_gain >= cfg.patience:
            log.info("round %d: test accuracy has not risen for %d round(s); stopping", k, rounds_without_gain)
            break


def _reads_through_ray(task: TaskConfig) -> bool:
    """Whether loading the task reads a URI (`s3://...`) through Ray Data: a task file at a URI or naming one."""
    if task.file is None:
        return False
    if "://" in task.file:
        return True
    from ..tasks.taskfile import read_task_file

    sources = read_task_file(task.file, task.spec).spec.data.sources().values()
    return any("://" in src.path for src in sources)


def read_mistakes(rd: RunDir, exam_round: int, max_negatives: int, mode: str = "answer") -> dict[str, list[str]]:
    """Question id -> the student's distinct wrong rationales (up to max_negatives) from a round's exam.

    mode (exam.mistakes): "answer", wrong final answers; "steps", also right answers reached by a false step.
    """
    from ..student.exam import mistake_mask

    path = rd.path / f"round_{exam_round}" / "exam.parquet"
    if not path.exists():
        return {}
    rows = read_parquet(path)
    wrong = rows[mistake_mask(rows, mode) & rows["error"].isna()]
    mistakes: dict[str, list[str]] = {}
    for qid, rationale in zip(wrong["id"], wrong["rationale"]):
        kept = mistakes.setdefault(qid, [])
        if rationale and rationale.strip() and rationale not in kept and len(kept) < max_negatives:
            kept.append(rationale)
    return {q: m for q, m in mistakes.items() if m}


class _StageRunner:
    """Runs one stage unless the manifest says it is done; records its metrics and wall time."""

    def __init__(self, cfg: ExperimentConfig, rd: RunDir, tracker: Tracker, task: TaskData):
        # The loaded task carries what the stages need (answer type, generation budget, teacher prompts),
        # for a built-in task and a task file alike.
        self.cfg, self.rd, self.tracker, self.task = cfg, rd, tracker, task

    def _run(self, k: int, name: str, fn) -> dict:
        entry = self.rd.done(k, name)
        if entry is not None:
            log.info("round %d %-10s done earlier (%.0f s); skipped", k, name, entry["wall_s"])
            return entry["metrics"]
        log.info("round %d %-10s ...", k, name)
        init_ray(self.cfg.ray)  # once, at the first stage that computes (a no-op when Ray is up)
        start = time.time()
        metrics = fn()
        entry = self.rd.record(k, name, metrics, time.time() - start)
        log.info("round %d %-10s done in %.0f s: %s", k, name, entry["wall_s"], _short(metrics))
        self.tracker.log(k, {f"{name}/{key}": v for key, v in metrics.items()})
        return metrics

    def exam(self, k: int, questions: list[Record], model: str, answer_type: str) -> dict:
        from ..student.exam import mistake_mask, run_exam

        def go():
            limit = self.cfg.exam.limit
            result = run_exam(questions[:limit] if limit else questions, model, self.cfg, answer_type=answer_type,
                              samples=self.cfg.exam.samples, greedy=False,
                              max_new_tokens=self.cfg.exam.max_new_tokens or self.task.max_new_tokens,
                              out_path=self.rd.round_dir(k) / "exam.parquet", seed=self.cfg.seed + k,
                              task=self.task.prompts)
            rows = result.rows
            wrong = rows[mistake_mask(rows, self.cfg.exam.mistakes)]
            # Right answers reached by a false step: mistakes under exam.mistakes=steps, counted either way.
            right_by_false_step = rows["correct"].astype(bool) & (rows["false_steps"].fillna("").str.len() > 0)
            _warn_failed_rows(k, "exam", rows)
            return {"exam_accuracy": result.sample_accuracy, "questions": int(rows["id"].nunique()),
                    "mistake_questions": int(wrong["id"].nunique()), "failed_rows": int(rows["error"].notna().sum()),
                    "false_step_samples": int(right_by_false_step.sum()), "tokens_per_s": result.tokens_per_s}
        return self._run(k, "exam", go)

    def evaluate(self, k: int, questions: list[Record], model: str, answer_type: str) -> dict:
        from ..student.exam import run_exam

        def go():
            result = run_exam(questions, model, self.cfg, answer_type=answer_type, samples=1, greedy=True,
                              max_new_tokens=self.cfg.eval.max_new_tokens or self.task.max_new_tokens,
                              out_path=self.rd.round_dir(k) / "eval.parquet", seed=self.cfg.seed,
                              task=self.task.prompts)
            _warn_failed_rows(k, "eval", result.rows)
            # Failed rows (an engine error, a prompt too long) count as wrong answers: said, and counted here.
            return {"accuracy": result.accuracy, "questions": len(questions), "failed_rows": result.n_failed,
                    "tokens_per_s": result.tokens_per_s}
        return self._run(k, "eval", go)

    def teacher(self, k: int, questions: list[Record], mistakes: dict | None, answer_type: str, model: str) -> dict:
        from ..teacher.stage import annotate

        def go():
            with teacher_endpoint(self.cfg, model) as base_url:
                result = annotate(questions, self.cfg.teacher, answer_type=answer_type, base_url=base_url,
                                  ledger_path=self.ledger_path, out_path=self.rd.round_dir(k) / "teacher.parquet",
                                  mistakes=mistakes, seed=self.cfg.seed + k, task=self.task.prompts)
            return {"questions": len(questions), "teacher_requests": result.requests_sent,
                    "teacher_ledger_hits": result.ledger_hits, "teacher_accepted": result.accepted,
                    "teacher_rejected": result.rejected, "teacher_rejected_answer": result.rejected_answer,
                    "teacher_rejected_steps": result.rejected_steps,
                    "teacher_rejected_feedback": result.rejected_feedback,
                    "teacher_rejected_truncated": result.rejected_truncated, "teacher_failed": result.failed,
                    "teacher_tokens": result.tokens, "teacher_cost_usd": result.cost_usd}
        return self._run(k, "teacher", go)

    @property
    def ledger_path(self) -> Path:
        return Path(self.cfg.teacher.ledger) if self.cfg.teacher.ledger else self.rd.path / "teacher_ledger.sqlite"

    def train_data(self, k: int, records: dict[str, Record], mistakes: dict, answer_type: str, model: str) -> dict:
        from ..student.models import load_tokenizer
        from ..train.data import build_train_items

        def go():
            teacher_rows = self._teacher_rows(k)
            all_mistakes = dict(mistakes)
            if self.cfg.train.all_rounds_data:  # negatives from every exam so far
                for j in range(k):
                    for qid, wrong in read_mistakes(self.rd, j, self.cfg.train.reflection.max_negatives,
                                                    self.cfg.exam.mistakes).items():
                        all_mistakes.setdefault(qid, wrong)
            items = build_train_items(teacher_rows, all_mistakes, records, load_tokenizer(model, "right"),
                                      self.cfg.train, answer_type=answer_type, seed=self.cfg.seed + k,
                                      task=self.task.prompts)
            items.to_parquet(self.rd.round_dir(k) / "train_data.parquet")
            valid = items["valid"].astype(bool) if "valid" in items else pd.Series([], dtype=bool)
            over = self._targets_over_budget(k, items)
            return {"items": len(items), "questions": int(items["id"].nunique()) if len(items) else 0,
                    "items_with_triplet": int(valid.sum()),  # what the triplet acts on; ranking needs a negative only
                    "items_with_negative": int(items["has_negative"].astype(bool).sum()) if len(items) else 0,
                    "targets_over_budget": over}
        return self._run(k, "train_data", go)

    def _targets_over_budget(self, k: int, items: pd.DataFrame) -> int:
        budget = self.cfg.eval.max_new_tokens or self.task.max_new_tokens
        over, median = targets_over_budget(items, budget)
        if over > 0.1 * len(items):  # a few long ones cost a few answers; most of them, the answer line
            log.warning("round %d: %d of %d training targets are longer than the student's generation budget "
                        "(%d tokens; median %d): it learns answers it cannot finish. Ask the teacher for shorter "
                        "answers (task.spec.prompts.feedback) or raise exam/eval.max_new_tokens",
                        k, over, len(items), budget, median)
        return over

    def _teacher_rows(self, k: int) -> pd.DataFrame:
        """Accepted teacher rationales of this round, plus earlier rounds' (all, or `replay` of them)."""
        current = read_parquet(self.rd.round_dir(k) / "teacher.parquet").assign(round=k)
        earlier = [read_parquet(p).assign(round=j) for j in range(1, k)
                   if (p := self.rd.path / f"round_{j}" / "teacher.parquet").exists()]
        rows = current
        if earlier and (self.cfg.train.all_rounds_data or self.cfg.train.replay):
            old = pd.concat(earlier, ignore_index=True)
            old = old[old["accepted"].astype(bool) & ~old["id"].isin(current["id"])]
            if not self.cfg.train.all_rounds_data:  # replay a seeded sample of earlier questions
                ids = sorted(old["id"].unique())
                keep = set(random.Random(self.cfg.seed + k).sample(ids, min(self.cfg.train.replay, len(ids))))
                old = old[old["id"].isin(keep)]
            rows = pd.concat([current, old], ignore_index=True)
        return rows[rows["accepted"].astype(bool)].reset_index(drop=True)

    def train(self, k: int, model: str) -> str:
        from ..train.trainer import train_round

        out_dir = self.rd.round_dir(k)

        # Before train.reflection.start_round: λ = 0 at train.lr; from it on: λ at train.reflection.lr (or train.lr).
        train = round_train(self.cfg.train, k)

        def go():
            result = train_round(out_dir / "train_data.parquet", model, out_dir, self.cfg.model_copy(update={"train": train}),
                                 seed=self.cfg.seed + k)
            # reflection_loss and the signals (Δ, or TRL's rewards/*) are None/absent where the loss acted on no item.
            return {"lm_loss": result.lm_loss, "reflection_loss": result.reflection_loss,
                    "reflection_kind": train.reflection.kind, "reflection_weight": train.reflection.weight,
                    "lr": train.lr, "reflection_items": result.reflection_items,
                    **result.signals, "steps": result.steps, "tokens": result.tokens, "model_dir": str(result.model_dir)}
        return self._run(k, "train", go)["model_dir"]


@contextmanager
def teacher_endpoint(cfg: ExperimentConfig, student_model: str):
    """The teacher's base URL: a configured endpoint, or a local server started for this stage only."""
    if cfg.teacher.backend == "openai":
        if not cfg.teacher.base_url:
            raise ValueError("teacher.base_url: required when teacher.backend is 'openai'")
        yield cfg.teacher.base_url
        return
    from ..teacher.server import LocalTeacherServer

    # `student` (STaR-style): the current student rationalizes its own mistakes, served locally.
    backend = "student" if cfg.teacher.backend == "student" else cfg.teacher.local_backend
    extra = ["--model-path", student_model] if backend == "student" else []
    with LocalTeacherServer(backend, cfg.task, cfg.teacher, seed=cfg.seed, extra_args=extra) as base_url:
        stops.pause_if_asked("teacher")  # tests: a stop while the server is up must stop it
        yield base_url


def _warn_failed_rows(k: int, stage: str, rows: pd.DataFrame) -> None:
    """One warning line when rows of an exam or evaluation failed (they count as wrong), with the commonest error."""
    errors = rows["error"].dropna().astype(str)
    if len(errors):
        log.warning("round %d %s: %d of %d rows failed and count as wrong (e.g. %s)", k, stage, len(errors), len(rows),
                    errors.value_counts().index[0][:200])


def _short(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                     if not isinstance(v, str))


def targets_over_budget(items: pd.DataFrame, budget: int) -> tuple[int, int]:
    """(training targets longer than the student's generation budget, the median target length), in tokens.

    A target is the rationale and answer line the student is trained to write (its eos may fall past the budget).
    A real LLM teacher's feedback answers can be several times its CoT answers' length; a student trained on them
    learns answers it cannot finish within `eval.max_new_tokens` and loses its answer line (docs/results.md, "Real
    teacher"). The run counts them (metrics) and warns when more than a tenth are; it does not drop them: the
    budget is the user's to choose."""
    if items.empty:
        return 0, 0
    lengths = items["input_ids"].map(len) - items["n_prefix"] - 1
    return int((lengths > budget).sum()), int(lengths.median())
