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


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray for the whole session (or the one already running), shut down when the session ends.

    Starting Ray costs seconds on 2 cores, so every module that asks for it shares one; a module that shuts it
    down itself (test_trainer's own fixture) just makes the next module start a fresh one.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
