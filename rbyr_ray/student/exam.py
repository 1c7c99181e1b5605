"""The exam and the evaluation: one Ray Data pipeline from questions to graded rows in Parquet.

    questions ─ from_items ─▶ map_batches(ExamWorker, actor pool of cfg.exam.replicas engine replicas)
              ─▶ graded rows (id, sample, rationale, predicted, correct, false_steps, engine, error, n_tokens)
              ─▶ Parquet

Each question becomes `samples` rows; each row's prompt is the task's student prefix
(`TaskData.prompts.student_prefix(record)`); generation stops at the task's stop, a blank line by default
(and eos). Evaluation is the same pipeline with greedy decoding and one sample.

    result = run_exam(data.train, "smollm2-135m", cfg, answer_type="numeric", samples=4, greedy=False,
                      max_new_tokens=96, out_path="runs/x/exam_r1.parquet", seed=0)
    result.accuracy, result.sample_accuracy, result.tokens_per_s

`correct` is answer-based (METHOD.md); `false_steps` lists the false arithmetic steps of a numeric sample
(tasks.check_steps, joined by "; ", "" when none), so that a right answer reached by a false step is marked;
with `exam.mistakes: steps` such a sample is a mistake too (`mistake_mask`).

Failure isolation: a row whose prompt does not fit the context, or whose generation raises, becomes a row
with `error` set (and correct=False); the rest of the exam completes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import ExamConfig, ExperimentConfig
from ..placement import stage_actor_class, wait_actors_dead
from ..tasks.grading import answers_match, extract_answer, first_block
from ..tasks.records import AnswerType, Record
from ..tasks.steps import check_steps
from ..tasks.taskfile import TaskPrompts, task_prompts
from ..testhooks import env_name, test_hook, warn_if_set
from .engines import Generation, SamplingSpec, make_engine
from .models import load_tokenizer, max_context, resolve_model_dir

log = logging.getLogger(__name__)

# Tests only: a text. A batch holding a prompt that contains it fails inside the engine call, as an engine that
# chokes on one input does, so that a test can check the row-by-row retry through the real pipeline. Read in
# every exam replica (a Ray worker inherits it), so it is a RBYR_TEST_ variable: set, it is logged as a warning.
FAIL_HOOK = "EXAM_FAIL_ON"
FAIL_ENV = env_name(FAIL_HOOK)

COLUMNS = ["id", "sample", "rationale", "predicted", "correct", "false_steps", "engine", "error", "n_tokens"]


def mistake_mask(rows: pd.DataFrame, mode: str = "answer") -> pd.Series:
    """The exam's mistakes: wrong samples; with mode "steps" (exam.mistakes) also right answers reached by a
    false step. Rows written before the `false_steps` column existed have none."""
    wrong = ~rows["correct"].astype(bool)
    if mode == "steps" and "false_steps" in rows:
        wrong |= rows["false_steps"].fillna("").astype(str).str.len() > 0
    return wrong


@dataclass(frozen=True)
class ExamProgress:
    """What the exam reports while it runs."""

    done: int
    total: int
    tokens: int
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class ExamResult:
    rows: pd.DataFrame  # COLUMNS, sorted by question order then sample
    accuracy: float  # over unique questions: mean per-question fraction of correct samples
    sample_accuracy: float  # fraction of correct samples
    tokens_per_s: float  # generated tokens / wall_s (engine start-up included)
    wall_s: float
    n_questions: int
    n_failed: int  # rows with an error
    n_tokens: int
    engine: str
    out_path: str | None
    generate_s: float = 0.0  # engine time summed over batches (all replicas)
    replicas: int = 1

    @property
    def engine_tokens_per_s(self) -> float:
        """Steady-state generation throughput of the pool: start-up and pipeline overhead excluded."""
        return self.n_tokens * self.replicas / self.generate_s if self.generate_s > 0 else 0.0


def log_progress(p: ExamProgress) -> None:
    log.info("exam: %d/%d rows, %.1f tok/s", p.done, p.total, p.tokens_per_s)


# ---------------------------------------------------------------------------------- the Ray Data stage


class ExamWorker:
    """A Ray Data callable class: one engine replica; each call generates and grades one batch of rows."""

    def __init__(self, *, engine: str, model_dir: str, dtype: str, max_model_len: int, spec: SamplingSpec,
                 answer_type: AnswerType, threads: int | None, device: str | None, tensor_parallel_size: int,
                 gpu_memory_utilization: float, seed: int):
        self.engine_name = engine
        self.spec = spec
        self.answer_type = answer_type
        self.tokenizer = load_tokenizer(model_dir)
        self.context = min(max_model_len, max_context(model_dir) or max_model_len)
        self.engine = make_engine(engine, model_dir, dtype=dtype, max_model_len=max_model_len, device=device,
                                  threads=threads, tensor_parallel_size=tensor_parallel_size,
                                  gpu_memory_utilization=gpu_memory_utilization, seed=seed)
        self.fail_on = test_hook(FAIL_HOOK)
        self.poisoned: set[tuple[int, ...]] = set()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from ..stops import pause_if_asked

        pause_if_asked("eval" if self.spec.greedy else "exam")  # tests: stop a run while its replicas generate
        ids = self.tokenizer(list(batch["prompt"]), add_special_tokens=False)["input_ids"]
        if self.fail_on:
            self.poisoned = {tuple(p) for p, text in zip(ids, batch["prompt"]) if self.fail_on in text}
        outputs: list[Generation | str] = [""] * len(batch)
        # Rows grouped by generation budget: a prompt near the context end gets fewer new tokens,
        # a prompt that leaves no room at all is a failed row.
        groups: dict[int, list[int]] = {}
        for i, prompt_ids in enumerate(ids):
            budget = min(self.spec.max_new_tokens, self.context - len(prompt_ids))
            if budget < 1:
                outputs[i] = (f"prompt too long: {len(prompt_ids)} tokens, context {self.context} "
                              f"(exam.max_model_len or the model's limit)")
            else:
                groups.setdefault(budget, []).append(i)
        start = time.perf_counter()
        for budget, rows in groups.items():
            spec = SamplingSpec(self.spec.greedy, self.spec.temperature, self.spec.top_k, budget, self.spec.stop)
            for i, out in zip(rows, self._generate([ids[i] for i in rows], spec, [int(batch["seed"].iloc[i])
                                                                                   for i in rows])):
                outputs[i] = out
        graded = pd.DataFrame([self._grade(batch.iloc[i], out) for i, out in enumerate(outputs)])
        graded["_gen_s"] = 0.0
        if len(graded):
            graded.loc[0, "_gen_s"] = time.perf_counter() - start  # the batch's engine time, once
        return graded

    def _generate(self, prompts: list[list[int]], spec: SamplingSpec, seeds: list[int]) -> list[Generation | str]:
        """The batch at once; when that raises, each row alone, so one bad row cannot sink the others."""
        try:
            if self.poisoned & {tuple(p) for p in prompts}:
                raise RuntimeError(f"injected engine failure ({FAIL_ENV})")
            return list(self.engine.generate(prompts, spec, seeds))
        except Exception as exc:  # noqa: BLE001 - any engine error must stay inside its rows
            if len(prompts) == 1:
                return [f"{type(exc).__name__}: {exc}"[:2000]]
            log.warning("batch of %d failed (%s); retrying row by row", len(prompts), exc)
        return [self._generate([p], spec, [s])[0] for p, s in zip(prompts, seeds)]

    def _grade(self, row: pd.Series, out: Generation | str) -> dict:
        if isinstance(out, str):
            return {"id": row["id"], "sample": int(row["sample"]), "rationale": "", "predicted": None,
                    "correct": False, "false_steps": "", "engine": self.engine_name, "error": out, "n_tokens": 0}
        choices = list(row["choices"]) if row["choices"] is not None else []
        predicted = extract_answer(self.answer_type, out.text, choices)
        # The steps of the text that was graded (up to the blank line); nothing to compute in choice/yes-no tasks.
        false = check_steps(first_block(out.text)).false_steps if self.answer_type == "numeric" else []
        return {"id": row["id"], "sample": int(row["sample"]), "rationale": out.text, "predicted": predicted,
                "correct": bool(answers_match(self.answer_type, predicted, row["answer"])),
                "false_steps": "; ".join(false), "engine": self.engine_name, "error": None,
                "n_tokens": out.n_tokens}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


# ---------------------------------------------------------------------------------- the driver side


def _threads(cfg: ExperimentConfig, cluster_cpus: float) -> int:
    """Torch/OMP threads per replica: the whole machine for one replica, else its CPU share rounded up."""
    if cfg.exam.replicas == 1:
        return max(1, min(int(cluster_cpus), os.cpu_count() or 1))
    return max(1, math.ceil(cfg.exam.cpus_per_replica))


def exam_device(ex: ExamConfig) -> str:
    """"auto": CUDA where GPUs are requested; "cpu" keeps logical GPUs (placement only) on the CPU."""
    if ex.device == "auto":
        return "cuda" if ex.gpus_per_replica > 0 else "cpu"
    return ex.device


def _summarize(rows: pd.DataFrame) -> tuple[float, float]:
    if rows.empty:
        return 0.0, 0.0
    per_question = rows.groupby("id", sort=False)["correct"].mean()
    return float(per_question.mean()), float(rows["correct"].mean())


def exam_items(records: Sequence[Record], samples: int, seed: int, prompts: TaskPrompts) -> list[dict]:
    """One row per (question, sample): its prompt in the task's student prefix, its gold, and its own seed."""
    return [{"id": r.id, "sample": s, "prompt": prompts.student_prefix(r), "answer": r.answer,
             "choices": list(r.choices), "seed": seed * 1_000_003 + i * samples + s}
            for i, r in enumerate(records) for s in range(samples)]


def length_ordered(items: list[dict]) -> list[dict]:
    """The rows in prompt-length order, the order batches are cut in: less left padding, and where length follows
    difficulty (arith's steps) rows that end at about the same token, so a batch generates less past its rows' ends
    (the hf engine alone: 1.19x on the study's 400 questions, bench/exam.py --order). Stable: a question's
    samples stay together."""
    return sorted(items, key=lambda item: len(item["prompt"]))


def run_exam(records: Sequence[Record], model_path: str, cfg: ExperimentConfig, *, answer_type: AnswerType,
             samples: int, greedy: bool, max_new_tokens: int, out_path: str | os.PathLike | None, seed: int,
             progress: Callable[[ExamProgress], None] | None = log_progress,
             task: TaskPrompts | None = None) -> ExamResult:
    """Examine `records` with the student at `model_path` (a name, HF folder, GGUF or adapter folder).

    Uses cfg.exam (engine, replicas, cpus/gpus per replica, batch size, temperature, top_k, vLLM limits),
    cfg.student (dtype, cache) and cfg.ray (the cluster). `greedy=True, samples=1` is the evaluation.
    `task`: the task's prompts (TaskData.prompts: the student prefix and its stop); None: the defaults.
    """
    import ray

    from ..ray_utils import init_ray

    start = time.perf_counter()
    warn_if_set()  # on the driver too: a replica's warning may never reach the user's terminal
    init_ray(cfg.ray)
    ex = cfg.exam
    model_dir = resolve_model_dir(model_path, cfg.student.cache_dir, cfg.student.allow_hub_download,
                                  cfg.student.dtype)
    prompts = task_prompts(task, answer_type)
    items = length_ordered(exam_items(records, samples, seed, prompts))
    spec = SamplingSpec(greedy=greedy, temperature=ex.temperature, top_k=ex.top_k, max_new_tokens=max_new_tokens,
                        stop=prompts.stop)
    order = {r.id: i for i, r in enumerate(records)}
    got: list[pd.DataFrame] = []
    tokens, generate_s = 0, 0.0
    if items:
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
        # Enough blocks that every replica gets work, each about one batch.
        n_blocks = max(1, min(len(items), max(ex.replicas * 2, math.ceil(len(items) / ex.batch_size))))
        ds = ray.data.from_items(items, override_num_blocks=n_blocks)
        worker = stage_actor_class(ExamWorker, "exam")
        try:
            ds = ds.map_batches(
                worker,
                fn_constructor_kwargs={
                    "engine": ex.engine, "model_dir": model_dir, "dtype": cfg.student.dtype,
                    "max_model_len": ex.max_model_len, "spec": spec, "answer_type": answer_type,
                    "threads": _threads(cfg, cluster_cpus), "device": exam_device(ex),
                    "tensor_parallel_size": ex.tensor_parallel_size,
                    "gpu_memory_utilization": ex.gpu_memory_utilization, "seed": seed},
                batch_size=ex.batch_size, batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=ex.replicas),
                # Fractional CPUs: Ray Data stalls when its actors hold every CPU of the cluster.
                num_cpus=ex.cpus_per_replica, num_gpus=ex.gpus_per_replica or None,
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
                got.append(batch)
                tokens += int(batch["n_tokens"].sum())
                generate_s += float(batch.pop("_gen_s").sum())
                if progress is not None:
                    progress(ExamProgress(sum(len(b) for b in got), len(items), tokens,
                                          time.perf_counter() - start))
        finally:
            # The finished (or abandoned) pipeline ends its actor pool: the engines are gone when run_exam returns.
            wait_actors_dead("exam", class_name=worker.__name__)
    rows = pd.concat(got, ignore_index=True) if got else pd.DataFrame(columns=COLUMNS)
    rows = _complete(rows, items, ex.engine)
    rows["_q"] = rows["id"].map(order)
    rows = rows.sort_values(["_q", "sample"], kind="stable").drop(columns="_q").reset_index(drop=True)[COLUMNS]
    wall = time.perf_counter() - start
    accuracy, sample_accuracy = _summarize(rows)
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(out_path, index=False)
    result = ExamResult(rows=rows, accuracy=accuracy, sample_accuracy=sample_accuracy,
                        tokens_per_s=tokens / wall if wall > 0 else 0.0, wall_s=wall, n_questions=len(records),
                        n_failed=int(rows["error"].notna().sum()), n_tokens=tokens, engine=ex.engine,
                        out_path=str(out_path) if out_path is not None else None, generate_s=generate_s,
                        replicas=ex.replicas)
    log.info("exam done: %d questions x %d samples, accuracy %.3f, %d failed rows, %.1f tok/s, %.1f s",
             len(records), samples, accuracy, result.n_failed, result.tokens_per_s, wall)
    return result


def _complete(rows: pd.DataFrame, items: list[dict], engine: str) -> pd.DataFrame:
    """Rows the pipeline never returned (a lost batch) become failed rows, so every (id, sample) is present."""
    seen = set(zip(rows["id"], rows["sample"].astype(int))) if not rows.empty else set()
    missing = [{"id": it["id"], "sample": it["sample"], "rationale": "", "predicted": None, "correct": False,
                "false_steps": "", "engine": engine, "error": "no result: the batch was lost", "n_tokens": 0}
               for it in items if (it["id"], it["sample"]) not in seen]
    if missing:
        rows = pd.concat([rows, pd.DataFrame(missing)], ignore_index=True)
    return rows
