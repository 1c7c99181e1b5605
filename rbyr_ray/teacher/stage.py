"""The teacher stage of a round: a Ray Data pipeline of async actors that ask the teacher through the ledger,
grade every rationale against the gold answer and, under `teacher.gate: steps`, check its arithmetic steps
(the quality gate), and write teacher.parquet.

    result = annotate(data.train, cfg.teacher, answer_type="numeric", base_url=url,
                      ledger_path="runs/x/teacher_ledger.sqlite", out_path="runs/x/round1/teacher.parquet")
    result.accepted, result.requests_sent, result.ledger_hits
    result.rows        # id, sample, rationale, predicted, accepted, reject_reason, ... (ROW_COLUMNS)

`mistakes=None`: the round-1 few-shot CoT prompt for every record. Otherwise the feedback prompt (one of the
student's wrong rationales, chosen by `seed`, plus the hint) for the records in `mistakes` only.
Each question asks for k = cfg.samples samples (indices 0..k-1); with cfg.reask = m, a question without an
accepted rationale is asked again for samples k..2k-1, and so on, up to m times. A question whose requests
failed for good appears with its error in the `error` column: never silently dropped.

A teacher's answer is read whole (`grading.extract_teacher_answer`): its final answer is the one it states last,
and the rationale kept (`rationale`, one line) is the reasoning before that statement, markup folded away. A
feedback answer's sentences about the student, the hint or the previous attempt are removed
(`prompts.remove_feedback_talk`); the full text stays in `text`, the server's finish reason in `finish_reason`.

The gate (`resolve_gate`): `answer` accepts a rationale whose final answer equals the gold one; `steps` also
needs every checked step `<expression> = <number>` of the rationale (the reasoning before its final answer) to
be true. `reject_reason` says why a rationale was not accepted, in this order: `truncated` (cut off at
max_tokens: finish reason "length"), `unparseable` (no final answer found), `wrong_answer`, `refers_to_feedback`
(a reference to the student, the hint or the previous attempt inside a step, or nothing but such talk), or
`false_step: 22 + 81 = 203` (all its false steps, joined by "; "). The false steps of every numeric rationale are
recorded (`false_steps`, `steps_checked`) under either gate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import TeacherConfig
from ..errors import RunError
from ..tasks.grading import answers_match, extract_teacher_answer
from ..tasks.prompts import (
    fold_rationale,
    remove_feedback_talk,
    strip_answer_line,
)
from ..tasks.records import Record
from ..tasks.steps import check_steps
from ..tasks.taskfile import TaskPrompts, task_prompts

log = logging.getLogger(__name__)

ROW_COLUMNS = ["id", "sample", "rationale", "predicted", "accepted", "reject_reason", "false_steps", "steps_checked",
               "error", "cached", "kind", "text", "attempt", "http_requests", "tokens", "cost_usd", "finish_reason"]


class TeacherFailed(RunError):
    """Not a single rationale could be obtained (connection refused, 401, budget, ...); the message says why."""


@dataclass
class TeacherResult:
    rows: pd.DataFrame
    questions: int
    requests_sent: int   # HTTP requests sent by this call, retries included
    ledger_hits: int     # samples served from the ledger instead of the server
    accepted: int        # rationales that passed the gate (right final answer; under `steps`, no false step)
    rejected: int        # rationales obtained but rejected: the sum of the rejected_* counts
    failed: int          # samples not obtained (retries exhausted, non-retryable error, or budget)
    tokens: int          # spent by requests this call sent
    cost_usd: float
    wall_s: float
    out_path: str | None = None
    budget_message: str | None = None
    rejected_answer: int = 0  # for a wrong or missing final answer
    rejected_steps: int = 0   # right final answer, but a false step (gate `steps`)
    rejected_feedback: int = 0   # right final answer, but it refers to the student, the hint or the attempt
    rejected_truncated: int = 0  # cut off at max_tokens
    gate: str = "answer"      # the gate applied (`auto` resolved)

    def summary(self) -> dict:
        """The CLI's --json line."""
        return {"questions": self.questions, "accepted": self.accepted, "rejected": self.rejected,
                "rejected_answer": self.rejected_answer, "rejected_steps": self.rejected_steps,
                "rejected_feedback": self.rejected_feedback, "rejected_truncated": self.rejected_truncated,
                "gate": self.gate,
                "failed": self.failed, "requests_sent": self.requests_sent, "ledger_hits": self.ledger_hits,
                "tokens": self.tokens, "cost_usd": round(self.cost_usd, 6), "wall_s": round(self.wall_s, 3),
                "budget_exhausted": self.budget_message is not None}


# ----------------------------------------------------------------------------------------- the gate


def resolve_gate(gate: str, answer_type: str) -> str:
    """The gate applied: `auto` is `steps` for numeric tasks; a choice or yes/no task has nothing to compute,
    so any gate is `answer` there."""
    if answer_type != "numeric":
        return "answer"
    return "steps" if gate == "auto" else gate


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reject_reason: str | None  # None when accepted or not obtained
    false_steps: str | None    # the false steps joined by "; " ("" when none; None when not checked)
    steps_checked: int


def judge(text: str | None, predicted: str | None, gold: str, answer_type: str, gate: str, *,
          reasoning: str | None = None, truncated: bool = False, feedback_talk: Sequence[str] = ()) -> Verdict:
    """The quality gate for one teacher answer (`gate` already resolved). `reasoning` is the text whose steps are
    checked (default: the text before its "Answer:" line); `truncated`: cut off at max_tokens; `feedback_talk`:
    the references to the feedback prompt left in the reasoning."""
    if text is None:
        return Verdict(False, None, None, 0)
    reasoning = strip_answer_line(text) if reasoning is None else reasoning
    steps = check_steps(reasoning) if answer_type == "numeric" else None
    false = "; ".join(steps.false_steps) if steps is not None else None
    checked = steps.checked if steps is not None else 0
    if truncated:
        return Verdict(False, "truncated", false, checked)
    if predicted is None:
        return Verdict(False, "unparseable", false, checked)
    if not answers_match(answer_type, predicted, gold):
        return Verdict(False, "wrong_answer", false, checked)
    if feedback_talk:
        return Verdict(False, "refers_to_feedback", false, checked)
    if gate == "steps" and false:
        return Verdict(False, f"false_step: {false}", false, checked)
    return Verdict(True, None, false, checked)


# ----------------------------------------------------------------------------------------- requests


def build_requests(records: Sequence[Record], cfg: TeacherConfig, answer_type: str,
                   mistakes: dict[str, list[str]] | None = None, seed: int = 0,
                   task: str | TaskPrompts | None = None) -> list[dict]:
    """One row per question to ask: its prompt (JSON messages), gold answer and kind ("cot" or "feedback").
    `task`: the task's prompts (TaskData.prompts; a task file's own), or a built-in task's name, whose own
    few-shot demonstrations (prompts.FEW_SHOT) the CoT prompt then uses when it has them.

    The wrong rationale shown in a feedback prompt is drawn with a per-question seeded RNG, so that a rerun
    builds the very same prompt and finds it in the ledger.
    """
    rows = []
    prompts_ = task_prompts(task, answer_type)  # once: a built-in task's name reads its file
    for order, record in enumerate(records):
        if mistakes is None:
            messages, kind = prompts_.cot_messages(record, few_shot=cfg.few_shot), "cot"
        else:
            wrong = [w for w in mistakes.get(record.id) or [] if w and w.strip()]
            if not wrong:
                continue
            pick = random.Random(f"{seed}:{record.id}").choice(sorted(wrong))
            messages = prompts_.feedback_messages(record, pick, use_hint=cfg.use_hint)
            kind = "feedback"
        rows.append({"order": order, "id": record.id, "kind": kind, "messages": json.dumps(messages),
                     "answer": record.answer, "choices": json.dumps(list(record.choices)),
                     "question": record.question})
    return rows


class TeacherUDF:
    """Ray Data actor: each batch of questions fans out concurrently through one CachedTeacher.

    `__call__` is a coroutine: Ray Data (2.60) runs it on the actor's event loop and overlaps several
    batches; the client's semaphore bounds the requests in flight.
    """

    def __init__(self, cfg: dict, base_url: str, ledger_path: str, answer_type: str, share: int = 1):
        from .cached import CachedTeacher
        from .client import TeacherClient
        from .ledger import Ledger

        self.cfg = TeacherConfig.model_validate(cfg)
        self.answer_type = answer_type
        self.gate = resolve_gate(self.cfg.gate, answer_type)
        client = TeacherClient.from_config(self.cfg, base_url, share=share)
        self.teacher = CachedTeacher(client, Ledger(ledger_path), self.cfg)
        self.active = 0  # batches in progress on this actor's event loop

    async def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        self.active += 1
        try:
            results = await asyncio.gather(*(self.question(row) for row in batch.to_dict("records")))
        finally:
            self.active -= 1
            if not self.active:
                # Idle: close the HTTP session on this loop (the next batch opens a new one). Ray Data ends the
                # actor without awaiting anything, and an open aiohttp session then warns "Unclosed client session".
                await self.teacher.client.aclose()
        return pd.DataFrame([r for rows in results for r in rows], columns=["order", *ROW_COLUMNS])

    async def question(self, row: dict) -> list[dict]:
        messages = json.loads(row["messages"])
        choices = tuple(json.loads(row["choices"]))
        k = self.cfg.samples
        out: list[dict] = []
        for attempt in range(self.cfg.reask + 1):
            indices = list(range(attempt * k, (attempt + 1) * k))
            got = await self.teacher.samples(messages, indices)
            first = True
            for i in indices:
                text = got.texts.get(i)
                reading = extract_teacher_answer(self.answer_type, text, choices)
                reasoning, talk = reading.reasoning, []
                if row["kind"] == "feedback" and text is not None:
                    reasoning, talk = remove_feedback_talk(reading.reasoning, row.get("question") or "")
                    if reading.reasoning.strip() and not reasoning.strip():
                        talk = [reading.rationale]  # nothing but talk about the feedback
                finish = got.finish_reasons.get(i)
                verdict = judge(text, reading.answer, row["answer"], self.answer_type, self.gate,
                                reasoning=reasoning, truncated=finish == "length", feedback_talk=talk)
                out.append({
                    "order": row["order"], "id": row["id"], "sample": i,
                    "rationale": fold_rationale(reasoning) if text is not None else "",
                    "predicted": reading.answer if text is not None else None, "accepted": verdict.accepted, "reject_reason": verdict.reject_reason,
                    "false_steps": verdict.false_steps, "steps_checked": verdict.steps_checked,
                    "error": got.errors.get(i), "cached": i in got.cached, "kind": row["kind"],
                    "text": text, "attempt": attempt,
                    # Per-question accounting rides on one row so that column sums are totals.
                    "http_requests": got.http_requests if first else 0,
                    "tokens": got.tokens if first else 0, "cost_usd": got.cost_usd if first else 0.0,
                    # The server's finish reason ("stop", "length"); None for ledger entries recorded without one.
                    "finish_reason": finish,
                })
                first = False
            budget_hit = any(e.startswith("teacher budget reached") for e in got.errors.values())
            # A question whose rationales were all rejected, for either reason, is asked again (teacher.reask).
            if budget_hit or any(r["accepted"] for r in out):
                break
        return out


# ------------------------------------------------------------------------------------------ the stage


def _check_key(cfg: TeacherConfig, base_url: str) -> None:
    """Before any request: an `openai` teacher whose key variable is not set is an error, unless its endpoint is
    on this machine's loopback (a keyless llama.cpp or vLLM server): then requests go without a key."""
    from .client import is_loopback

    if cfg.backend != "openai" or not cfg.api_key_env or os.environ.get(cfg.api_key_env):
        return
    if is_loopback(base_url):
        log.info("teacher: $%s is not set and %s is a loopback endpoint: requests are sent without an API key",
                 cfg.api_key_env, base_url)
        return
    raise ValueError(f"teacher.backend=openai reads its API key from ${cfg.api_key_env}, which is not set; "
                     f"export it (or set teacher.api_key_env to the variable that holds it, or to null for an "
                     f"endpoint that wants no key)")


def _key_hint(cfg: TeacherConfig) -> str:
    """What to do about an endpoint that refused us for the key (HTTP 401/403)."""
    if not cfg.api_key_env:
        return "the endpoint wants an API key: set teacher.api_key_env to the variable that holds it"
    if not os.environ.get(cfg.api_key_env):
        return (f"the endpoint wants an API key and ${cfg.api_key_env} is not set: export it "
                f"(or set teacher.api_key_env to the variable that holds the key)")
    return f"the endpoint refused the key in ${cfg.api_key_env}"


def no_rationale_reason(result: TeacherResult, cfg: TeacherConfig) -> str | None:
    """One line on why not a single rationale was obtained (every request failed), else None.

    A teacher that answers, even wrongly, is not a failure here: the gate deals with its answers.
    """
    if result.questions == 0 or result.accepted + result.rejected > 0:
        return None
    errors = result.rows["error"].dropna().astype(str)
    if errors.empty:
        return f"no rationale obtained for any of {result.questions} questions"
    common = errors.value_counts().index[0]
    reason = (f"no rationale obtained for any of {result.questions} questions: every request failed "
              f"({len(errors)} samples; e.g. {common[:200]})")
    if common.startswith(("http 401", "http 403")):
        # A worker without the key that the driver has (a cluster's node): the example says so; the driver's hint
        # ("the endpoint refused the key") would mislead.
        if not (" is not set on " in common and cfg.api_key_env and os.environ.get(cfg.api_key_env)):
            reason += f"; {_key_hint(cfg)}"
    elif cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        reason += f" (${cfg.api_key_env} is not set)"  # perhaps not the cause, but the first thing to rule out
    return reason


def on_driver_node(base_url: str) -> dict:
    """Ray placement for the teacher actors: a loopback endpoint (a local server the driver started) is
    reachable only from the driver's machine, so the actors go to the driver's node on a cluster; any other
    endpoint can be reached from everywhere."""
    import ray

    from .client import is_loopback

    if not is_loopback(base_url):
        return {}
    return {"label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}


def _out_file(out_path: str | os.PathLike | None) -> Path | None:
    if out_path is None:
        return None
    path = Path(out_path)
    return path if path.suffix == ".parquet" else path / "teacher.parquet"


def annotate(records: Sequence[Record], cfg: TeacherConfig, *, answer_type: str, base_url: str | None,
             ledger_path: str | os.PathLike, out_path: str | os.PathLike | None,
             mistakes: dict[str, list[str]] | None = None, seed: int = 0,
             task: str | TaskPrompts | None = None) -> TeacherResult:
    """Ask the teacher for k rationales per question as a Ray Data stage; grade, record, write Parquet.

    `task`: the task's prompts (TaskData.prompts) or a built-in task's name, as for build_requests.
    `out_path` is a .parquet file or a folder (then <folder>/teacher.parquet). Ray is started if it is not
    running yet. Returns a TeacherResult; when the budget stops requests, `budget_message` says so and the
    unsent samples are rows with that message as their error.
    """
    import ray

    base_url = base_url or cfg.base_url
    if not base_url:
        raise ValueError("no teacher base_url: pass base_url or set teacher.base_url")
    _check_key(cfg, base_url)
    from .ledger import check_ledger

    check_ledger(ledger_path)  # a broken or locked ledger: one line here, not a traceback from every actor
    start = time.monotonic()
    requests = build_requests(records, cfg, answer_type, mistakes, seed, task=task)
    rows = pd.DataFrame(columns=ROW_COLUMNS)
    if requests:
        if not ray.is_initialized():
            from ..ray_utils import init_ray

            init_ray()
        replicas = max(1, min(cfg.replicas, len(requests)))
        per_actor = math.ceil(cfg.concurrency / replicas)
        # Ray Data overlaps a few batches per async actor; batches of about one actor's concurrency keep the
        # semaphore saturated without making one slow question hold back a large batch.
        batch_size = max(4, per_actor)
        ds = ray.data.from_items(requests, override_num_blocks=max(1, math.ceil(len(requests) / batch_size)))
        ds = ds.map_batches(
            TeacherUDF, batch_size=batch_size, batch_format="pandas", num_cpus=0.25,
            # A fractional CPU: Ray Data stalls when its actors hold every CPU, and these mostly wait on I/O.
            compute=ray.data.ActorPoolStrategy(size=replicas), **on_driver_node(base_url),
            fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json"), "base_url": base_url,
                                   "ledger_path": str(Path(ledger_path).resolve()), "answer_type": answer_type,
                                   "share": replicas})
        rows = ds.to_pandas()
        rows = rows.sort_values(["order", "sample"], kind="stable").drop(columns=["order"]).reset_index(drop=True)
    rows = rows.astype({"sample": "int64", "accepted": "bool", "cached": "bool", "attempt": "int64",
                        "steps_checked": "int64", "http_requests": "int64", "tokens": "int64", "cost_usd": "float64"})
    errors = rows["error"].dropna()
    budget = next((e for e in errors if str(e).startswith("teacher budget reached")), None)
    obtained = rows["text"].notna()
    reasons = rows["reject_reason"].fillna("")
    for_steps, for_talk, cut = reasons.str.startswith("false_step"), reasons == "refers_to_feedback", reasons == "truncated"
    result = TeacherResult(
        rows=rows, questions=len(requests), requests_sent=int(rows["http_requests"].sum()),
        ledger_hits=int(rows["cached"].sum()), accepted=int(rows["accepted"].sum()),
        rejected=int((obtained & ~rows["accepted"]).sum()), failed=int((~obtained).sum()),
        tokens=int(rows["tokens"].sum()), cost_usd=float(rows["cost_usd"].sum()),
        wall_s=time.monotonic() - start, budget_message=budget,
        rejected_answer=int((obtained & ~rows["accepted"] & ~for_steps & ~for_talk & ~cut).sum()),
        rejected_steps=int(for_steps.sum()), rejected_feedback=int(for_talk.sum()), rejected_truncated=int(cut.sum()),
        gate=resolve_gate(cfg.gate, answer_type))
    out_file = _out_file(out_path)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(out_file, index=False)
        result.out_path = str(out_file)
    if budget:
        log.warning("%s", budget)
    log.info("teacher: %d questions, %d accepted, %d rejected (%d for the answer, %d for a false step, %d referring "
             "to the feedback, %d truncated; gate %s), %d failed; %d requests sent, %d ledger hits", result.questions,
             result.accepted, result.rejected, result.rejected_answer, result.rejected_steps, result.rejected_feedback,
             result.rejected_truncated, result.gate, result.failed, result.requests_sent, result.ledger_hits)
    reason = no_rationale_reason(result, cfg)
    if reason is not None:  # what was obtained is written above and its requests are in the ledger
        raise TeacherFailed(reason)
    return result
