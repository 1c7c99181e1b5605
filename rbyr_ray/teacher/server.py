"""The local teacher server: OpenAI-compatible `/v1/chat/completions` (with `n` and `usage`) and `/v1/models`,
backed by the `solver` or `reference` backend, with fault injection for robustness tests.

    rbyr-ray teacher serve --backend solver --port 8000 --latency-ms 100 --error-rate 0.2

    with LocalTeacherServer("solver", cfg.task, cfg.teacher) as base_url:   # a subprocess on a free port
        annotate(records, cfg.teacher, base_url=base_url, ...)

Per request, after the added latency (an `asyncio.sleep`, so it never blocks other requests): with
probability error_rate an HTTP 500, else rate_limit_rate an HTTP 429; otherwise each of the n choices is,
independently, a wrong answer (wrong_rate), unparseable text (garbage_rate), the right answer after one false
step (false_step_rate), the correct answer talking about the feedback prompt (feedback_talk_rate; feedback
prompts only: half of them a removable sentence about the student, half a reference inside the first step where
it has one), the correct answer cut off in the middle with finish_reason "length" (truncate_rate), or the
backend's correct one.
`GET /stats` counts what the server did (injected faults included), so tests can check what actually arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ..config import TaskConfig, TeacherConfig
from .backends import Backend, ReferenceBackend, SolverBackend, garbage

log = logging.getLogger(__name__)


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    wrong_rate: float = 0.0
    garbage_rate: float = 0.0
    false_step_rate: float = 0.0
    feedback_talk_rate: float = 0.0
    truncate_rate: float = 0.0

    @classmethod
    def from_config(cls, cfg: TeacherConfig) -> Faults:
        return cls(cfg.latency_ms, cfg.error_rate, cfg.rate_limit_rate, cfg.wrong_rate, cfg.garbage_rate,
                   cfg.false_step_rate)


@dataclass
class ServerStats:
    requests: int = 0       # chat completion requests received
    completions: int = 0    # answered with 200
    choices: int = 0
    errors_500: int = 0
    errors_429: int = 0
    unauthorized: int = 0
    held: int = 0           # requests held by `hold_after` (tests)
    wrong: int = 0          # choices with an injected wrong answer
    garbage: int = 0        # unparseable choices
    false_steps: int = 0    # choices with the right answer after an injected false step
    feedback_talk: int = 0          # right answers with an added sentence about the student (removable)
    feedback_talk_in_step: int = 0  # right answers with a reference to the student inside a step (not removable)
    truncated: int = 0      # choices cut off, finish_reason "length"
    keyed: int = 0          # requests that carried an Authorization header
    started_at: float = field(default_factory=time.time)


def count_tokens(text: str) -> int:
    """A whitespace/punctuation token count: the local server's `usage` (no tokenizer needed).

    >>> count_tokens("12 + 7 = 19.")
    6
    """
    return len(re.findall(r"\w+|[^\w\s]", text))


def make_app(backend: Backend, *, model: str = "rbyr-local-teacher", faults: Faults | None = None,
             api_key: str | None = None, seed: int | None = None, ignore_n: bool = False,
             hold_after: int | None = None) -> web.Application:
    """The aiohttp application; `seed` makes fault injection and wording reproducible; `ignore_n` answers
    one choice whatever n asks for, like servers that do not implement n.
    `hold_after` (tests): answer the first N requests and hold every later one unanswered, so that a test can
    kill a client at a known point: exactly N answered, the rest in flight."""
    faults = faults or Faults()
    request_log = os.environ.get("RBYR_TEACHER_REQUEST_LOG")
    rng = random.Random(seed)
    stats = ServerStats()
    admitted = 0
    batcher = _Batcher(backend) if getattr(backend, "batched", False) else None

    def error(status: int, message: str, kind: str) -> web.Response:
        return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status,
                                 headers={"Retry-After": "0"} if status == 429 else None)

    def authorized(request: web.Request) -> bool:
        if api_key is None:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {api_key}"

    async def models(request: web.Request) -> web.Response:
        if not authorized(request):
            stats.unauthorized += 1
            return error(401, "invalid or missing API key", "invalid_request_error")
        return web.json_response({"object": "list", "data": [
            {"id": model, "object": "model", "created": int(stats.started_at), "owned_by": "rbyr-ray"}]})

    async def completions(request: web.Request) -> web.Response:
        nonlocal admitted
        stats.requests += 1
        if "Authorization" in request.headers:
            stats.keyed += 1
        if not authorized(request):
            stats.unauthorized += 1
            return error(401, "invalid or missing API key", "invalid_request_error")
        try:
            body = await request.json()
            messages = body["messages"]
            n = int(body.get("n") or 1)
            if not isinstance(messages, list) or not 1 <= n <= 128:
                raise ValueError("messages must be a list and 1 <= n <= 128")
            if ignore_n:
                n = 1
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            return error(400, f"bad request: {exc}", "invalid_request_error")
        admitted += 1
        if hold_after is not None and admitted > hold_after:
            stats.held += 1
            await asyncio.Event().wait()  # until the server stops
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000.0)
        draw = rng.random()
        if draw < faults.error_rate:
            stats.errors_500 += 1
            return error(500, "injected server error", "server_error")
        if draw < faults.error_rate + faults.rate_limit_rate:
            stats.errors_429 += 1
            return error(429, "injected rate limit", "rate_limit_error")
        # Wording follows the request's content (not arrival order), so a resumed run gets the same answers.
        offset = int(hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8], 16)
        if request_log is not None:  # tests count what was sent, across server restarts
            with open(request_log, "a") as fh:  # noqa: ASYNC230 - one tiny line, test runs only
                fh.write(json.dumps({"hash": f"{offset:08x}", "n": n}) + "\n")
        texts, finish = [], []
        feedback = "Student's solution:" in str(messages[-1].get("content", "")) if messages else False
        for i in range(n):
            roll = rng.random()
            bad = faults.wrong_rate + faults.garbage_rate
            slips = bad + faults.false_step_rate
            finish.append("stop")
            if roll < faults.wrong_rate:
                stats.wrong += 1
                texts.append(backend.wrong(messages, rng))
            elif roll < bad:
                stats.garbage += 1
                texts.append(garbage(rng))
            elif roll < slips and (slipped := backend.false_step(messages, rng)) is not None:
                stats.false_steps += 1
                texts.append(slipped)
            elif roll < slips + faults.feedback_talk_rate and feedback:
                text, in_step = _talk_about_feedback(backend.answer(messages, offset + i), rng)
                stats.feedback_talk_in_step += in_step
                stats.feedback_talk += not in_step
                texts.append(text)
            elif roll < slips + faults.feedback_talk_rate + faults.truncate_rate:
                stats.truncated += 1
                full = backend.answer(messages, offset + i)
                texts.append(full[: len(full) // 2])
                finish[-1] = "length"
            elif batcher is not None:
                texts.append(batcher.submit(messages, offset + i))
            else:
                texts.append(backend.answer(messages, offset + i))
        if batcher is not None:  # model backends: generate all pending samples of all requests together
            texts = [await t if isinstance(t, asyncio.Future) else t for t in texts]
        stats.completions += 1
        stats.choices += n
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        completion_tokens = sum(count_tokens(t) for t in texts)
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                        for i, (t, f) in enumerate(zip(texts, finish))],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    async def stats_view(request: web.Request) -> web.Response:
        return web.json_response(stats.__dict__)

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/stats", stats_view)
    app.router.add_get("/health", lambda request: web.json_response({"ok": True}))
    return app


def _talk_about_feedback(text: str, rng: random.Random) -> tuple[str, bool]:
    """A correct answer that talks about the feedback prompt, as real LLM teachers do: (text, whether the
    reference sits inside a step, where cleaning cannot remove it). Half the time, and only where the first line
    has a step ("="), the reference is inside it; else a sentence of its own."""
    first, sep, rest = text.partition("\n")
    if "=" in first and rng.random() < 0.5:
        return f"Unlike the student's solution, {first}{sep}{rest}", True
    return f"The student's solution is wrong: it made an error.\n{text}", False


class _Batcher:
    """Collects the samples of concurrent requests and answers them in one `answer_batch` call, run in a
    thread so the server keeps accepting requests while a model generates."""

    def __init__(self, backend, max_batch: int = 64, wait_s: float = 0.05):
        self.backend, self.max_batch, self.wait_s = backend, max_batch, wait_s
        self.pending: list[tuple[list[dict], int, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    def submit(self, messages: list[dict], variant: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((messages, variant, future))
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._drain())
        return future

    async def _drain(self) -> None:
        while self.pending:
            await asyncio.sleep(self.wait_s)  # let concurrent requests join the batch
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch:]
            try:
                texts = await asyncio.to_thread(self.backend.answer_batch, [(m, v) for m, v, _ in batch])
            except Exception as exc:  # noqa: BLE001 - a failed generation fails its requests, not the server
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, _, future), text in zip(batch, texts):
                future.set_result(text)


def build_backend(name: str, task_cfg: TaskConfig | None = None, model_path: str | None = None) -> Backend:
    """`solver` (arith, templates from the task config) or `reference` (loads the task's train and test)."""
    task_cfg = task_cfg or TaskConfig()
    if name == "solver":
        return SolverBackend(templates=task_cfg.arith.templates)
    if name == "reference":
        from ..tasks import load_task

        # The server answers whatever split the client asks about: index every record, without limits.
        data = load_task(task_cfg.model_copy(update={"train_limit": None, "test_limit": None, "val_fraction": 0.0}))
        return ReferenceBackend.from_task(data)
    if name == "student":
        if not model_path:
            raise ValueError("the student backend needs --model-path (the student's HF folder)")
        from ..tasks import task_prompts_of
        from .backends import StudentBackend

        return StudentBackend(model_path, task=task_prompts_of(task_cfg))
    raise ValueError(f"unknown local teacher backend {name!r}: expected solver, reference or student")


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0, announce=print) -> None:
    """Serve until cancelled; binds first, so that `--port 0` can announce the port the OS chose."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    bound = sock.getsockname()[1]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    shown = f"[{host}]" if ":" in host else host
    announce(f"rbyr-ray teacher listening on http://{shown}:{bound}/v1")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the run that started it dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


_LISTENING = re.compile(r"listening on (http://\S+/v1)")


class LocalTeacherServer:
    """Context manager: `rbyr-ray teacher serve` in a subprocess on a free loopback port; yields its base_url.

        with LocalTeacherServer("solver", TaskConfig(), TeacherConfig(latency_ms=5)) as url:
            ...   # url == "http://127.0.0.1:PORT/v1"

    Fault flags come from `teacher_cfg`; the task config goes through a temporary YAML file so that the
    reference backend can load the same task (data dir, arith settings, templates).
    """

    def __init__(self, backend: str = "solver", task_cfg: TaskConfig | None = None,
                 teacher_cfg: TeacherConfig | None = None, *, host: str = "127.0.0.1", api_key: str | None = None,
                 seed: int | None = None, startup_timeout_s: float = 60.0, log_path: str | os.PathLike | None = None,
                 extra_args: list[str] | None = None):
        self.backend = backend
        self.task_cfg = task_cfg or TaskConfig()
        self.teacher_cfg = teacher_cfg or TeacherConfig()
        self.host = host
        self.api_key = api_key
        self.seed = seed
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path
        self.extra_args = list(extra_args or [])  # more `teacher serve` flags, e.g. ["--ignore-n"]
        self.base_url: str | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def command(self, task_file: str) -> list[str]:
        f = Faults.from_config(self.teacher_cfg)
        cmd = [sys.executable, "-m", "rbyr_ray.cli", "teacher", "serve", "--backend", self.backend,
               "--task-config", task_file, "--host", self.host, "--port", "0", "--model", self.teacher_cfg.model,
               "--latency-ms", str(f.latency_ms), "--error-rate", str(f.error_rate),
               "--rate-limit-rate", str(f.rate_limit_rate), "--wrong-rate", str(f.wrong_rate),
               "--garbage-rate", str(f.garbage_rate), "--false-step-rate", str(f.false_step_rate)]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        return cmd + self.extra_args

    def start(self) -> str:
        import yaml

        self._tmp = tempfile.TemporaryDirectory(prefix="rbyr-teacher-")
        task_file = str(Path(self._tmp.name) / "task.yaml")
        Path(task_file).write_text(yaml.safe_dump(self.task_cfg.model_dump(mode="json")))
        env = dict(os.environ)
        if self.api_key is not None:
            # Passed through the environment, never on the command line (visible in `ps`).
            env["RBYR_TEACHER_SERVER_KEY"] = self.api_key
        stdout_path = Path(self.log_path) if self.log_path else Path(self._tmp.name) / "server.log"
        self._log = open(stdout_path, "w")  # noqa: SIM115 - held open for the server's lifetime, closed in stop()
        self._proc = subprocess.Popen(self.command(task_file) + (["--api-key-env", "RBYR_TEACHER_SERVER_KEY"]
                                                                if self.api_key is not None else []),
                                      stdout=subprocess.PIPE, stderr=self._log, env=env, text=True,
                                      preexec_fn=_die_with_parent)  # noqa: PLW1509 - only calls prctl
        deadline = time.monotonic() + self.startup_timeout_s
        line = self._proc.stdout.readline()  # the first line announces the bound address
        match = _LISTENING.search(line or "")
        if not match:
            self.stop()
            raise RuntimeError(f"local teacher server did not start: {line!r}; see {stdout_path}")
        self.base_url = match.group(1)
        self._wait_ready(deadline)
        log.info("local teacher server (%s) at %s", self.backend, self.base_url)
        return self.base_url

    def _wait_ready(self, deadline: float) -> None:
        import urllib.error
        import urllib.request

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{self.base_url}/models", headers=headers),
                                            timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"local teacher server at {self.base_url} did not answer /v1/models")
            time.sleep(0.05)

    def stats(self) -> dict:
        """The server's own counters (GET /stats): requests received, completions, injected errors."""
        import urllib.request

        root = self.base_url[: -len("/v1")]
        with urllib.request.urlopen(f"{root}/stats", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stdout:
            self._proc.stdout.close()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
