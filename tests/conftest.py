"""Fixtures shared by the test modules that need a real local Ray, and the lazy build of .venv-vllm."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Modules whose tests run vLLM from .venv-vllm (heavy tier), and the fixture that starts its server.
VLLM_MODULES = {"test_vllm", "test_teacher_vllm"}
VLLM_FIXTURE = "vllm_server"
_ray_started_here: list[bool] = []


# test_exam's injected engine failure: the engine raises on a prompt holding this text (FAIL_ENV in every worker
# of the shared Ray; no other test's prompt holds it).
EXAM_POISON = "[the engine fails on this]"


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray for the whole session (or the one already running), shut down when the session ends.

    Starting and stopping Ray costs seconds on 2 cores, so every module that asks for it shares one; a module
    that shuts it down itself (test_cluster's two-node cluster) just makes the next module start a fresh one.
    """
    import ray

    from rbyr_ray.student.exam import FAIL_ENV

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized() and FAIL_ENV not in ray.get_runtime_context().runtime_env.get("env_vars", {}):
        ray.shutdown()  # a Ray an earlier test's run started itself: it lacks test_exam's hook
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {FAIL_ENV: EXAM_POISON}})
        _ray_started_here.append(True)
    yield ray


def pytest_sessionfinish(session, exitstatus):
    if _ray_started_here:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.hookimpl(trylast=True)  # after `-m "not heavy"` and `-k` have deselected
def pytest_collection_modifyitems(config, items):
    """`make setup` leaves .venv-vllm out (only the heavy vLLM tests need it): build it once when one is selected.

    scripts/setup_vllm.sh is idempotent (a built venv costs nothing); a failed build fails those tests, which
    assert that vLLM is there, rather than skipping them.
    """
    if config.option.collectonly:
        return
    wanted = [i for i in items if getattr(getattr(i, "module", None), "__name__", "") in VLLM_MODULES
              or VLLM_FIXTURE in getattr(i, "fixturenames", ())]
    if wanted:
        build = subprocess.run([str(ROOT / "scripts" / "setup_vllm.sh")], cwd=ROOT, check=False)
        if build.returncode != 0:
            print(f"conftest: scripts/setup_vllm.sh exited {build.returncode}; the vLLM tests will fail")
