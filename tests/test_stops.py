"""Clean stops and one writer per run dir, with the real parts (the student, the local teacher server, Ray).

One tiny run is stopped with SIGTERM three times, each at a point the test controls rather than after a timer:
the test-only hook `RBYR_TEST_PAUSE_IN=STAGE:MARKER` (rbyr_ray/stops.py) makes the stage write MARKER (holding
the pid of the process that paused: a Ray Data exam replica, the driver with its teacher server up, a Ray Train
worker) and block; the test waits for MARKER, then sends SIGTERM to the run. Each time the run must exit 143
within seconds with one line, having stopped every process it started and recorded no half stage; resumed, it
must finish with every stage computed once. While the first run holds the run dir, a second `rbyr-ray run` on
it must be refused at once, having written nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rbyr_ray.config import load_config
from rbyr_ray.loop.rundir import LOCK_FILE, RunDir, lock_run_dir, release_run_dir

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = [
    "name=stops", "rounds=1", "task.arith.n_train=4", "task.arith.n_test=4", "task.arith.max_steps=1",
    "exam.round0=true", "exam.samples=2", "exam.limit=null", "exam.max_new_tokens=16", "exam.batch_size=8",
    "eval.max_new_tokens=16", "eval.batch_size=8", "train.batch_size=4", "train.epochs=1",
    "train.lora.r=4", "train.lora.alpha=8", "tracking.wandb=false",
]
STAGES = ["round_0/exam", "round_0/eval", "round_1/teacher", "round_1/train_data", "round_1/train", "round_1/eval"]
NATIVE_DUMP = "SIGTERM received at time="  # what Ray's native (absl) handler printed before the run's own


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RBYR_TEST_")}
    env.update(RAY_AUTH_MODE="disabled", WANDB_MODE="offline", HF_HUB_OFFLINE="1",
               PATH=f"{BIN}:{env.get('PATH', '')}", **extra)
    return env


def _stages(run_dir: Path) -> list[str]:
    path = run_dir / "manifest.json"
    return sorted(json.loads(path.read_text())["stages"]) if path.exists() else []


def test_a_changed_config_is_refused_naming_every_key_with_both_values(tmp_path: Path):
    cfg = load_config(REPO / "configs/demo.yaml")
    RunDir.create_or_resume(tmp_path / "run", cfg)
    changed = load_config(REPO / "configs/demo.yaml", ["train.lr=0.002", "teacher.model=other", "exam.limit=null"])
    with pytest.raises(ValueError) as err:
        RunDir.create_or_resume(tmp_path / "run", changed)
    message = str(err.value)
    assert "\n" not in message
    assert f"train.lr: {cfg.train.lr} → 0.002" in message
    assert f'teacher.model: "{cfg.teacher.model}" → "other"' in message
    assert f"exam.limit: {cfg.exam.limit} → null" in message
    assert message.count("→") == 3


def test_a_second_writer_is_refused_at_once_and_writes_nothing(tmp_path: Path):
    """The lock held by this process (as a running `rbyr-ray run` holds it): the CLI refuses in one line."""
    run_dir = tmp_path / "run"
    lock_run_dir(run_dir)
    try:
        out = subprocess.run([str(BIN / "rbyr-ray"), "run", str(REPO / "configs/demo.yaml"), *TINY,
                              "--run-dir", str(run_dir)], env=_env(), cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, check=False)
    finally:
        release_run_dir(run_dir)
    assert out.returncode == 1, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(run_dir) in lines[0] and f"pid {os.getpid()}" in lines[0]
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]
    # Released (here by hand, as a killed holder's by the kernel): the dir can be locked again.
    lock_run_dir(run_dir)
    release_run_dir(run_dir)


STOPPABLE = """
import sys, time
from rbyr_ray import stops
from rbyr_ray.errors import Stopped
stops.install()
try:
    with stops.deferred():  # as while a stage is recorded: the stop waits for the block's end
        print("ready", flush=True)
        time.sleep(1.0)
        print("block finished", flush=True)
    time.sleep(30)
except Stopped as stop:
    print(f"stopped by {stop.signal_name}", flush=True)
    sys.exit(stop.exit_code)
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_each_stop_signal_unwinds_after_a_deferred_block_with_its_exit_code(signum: int, code: int):
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signum)
        proc.send_signal(signum)  # a second one while stopping is ignored
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert out.splitlines() == ["block finished", f"stopped by {signal.Signals(signum).name}"]


def _files(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under the run dir: (size, mtime)."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run_dir.rglob("*") if p.is_file()}


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stop_in(stage: str, args: list[str], run_dir: Path, tmp_path: Path, second: list[str] | None = None) -> str:
    """`rbyr-ray ARGS` paused in `stage` by the hook, then SIGTERM: checks the stop; returns the run's stderr."""
    marker = tmp_path / f"paused-in-{stage}"
    log_path = tmp_path / f"stopped-in-{stage}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(BIN / "rbyr-ray"), *args], env=_env(RBYR_TEST_PAUSE_IN=f"{stage}:{marker}"),
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 400
            while not marker.exists():
                assert proc.poll() is None, f"the run ended before pausing in {stage}:\n{log_path.read_text()[-5000:]}"
                assert time.time() < deadline, f"no pause in {stage}"
                time.sleep(0.2)
            paused_pid = int(marker.read_text())
            started = _descendants(proc.pid)  # the teacher server, Ray's processes and its workers
            assert started and paused_pid in {proc.pid, *(p.pid for p in started)}
            files_before = _files(run_dir)
            if second is not None:
                second_run = subprocess.run([str(BIN / "rbyr-ray"), *second], env=_env(), cwd=tmp_path,
                                            capture_output=True, text=True, timeout=120, check=False)
                assert _files(run_dir) == files_before, "the refused run wrote into the run dir"
            proc.send_signal(signal.SIGTERM)  # to the run only, as `kill -TERM PID` sends it
            sent = time.time()
            code = proc.wait(timeout=60)
            stop_s = time.time() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert code == 143, text[-5000:]
    assert stop_s < 30, f"the stop took {stop_s:.0f} s"
    line = f"rbyr-ray {args[0]}: stopped by SIGTERM; completed work is kept; `rbyr-ray resume {run_dir}` continues"
    assert text.count(line) == 1, text[-5000:]
    assert NATIVE_DUMP not in text and "Traceback" not in text, text[-5000:]
    assert text.count("test-only hooks are set") >= 1
    # Every process the run started is gone (the teacher server, Ray and its workers), within a few seconds.
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, [(p.pid, p.name()) for p in alive]
    # No half stage: the manifest is as it was when the stage paused.
    assert _files(run_dir).get("manifest.json") == files_before.get("manifest.json")
    if second is not None:
        lines = second_run.stderr.strip().splitlines()
        assert second_run.returncode == 1 and len(lines) == 1, second_run.stderr[-3000:]
        assert str(run_dir) in lines[0] and f"pid {proc.pid}" in lines[0], lines[0]
        assert "round 0 exam" not in second_run.stdout + second_run.stderr
    print(f"stopped in {stage}: exit 143 after {stop_s:.1f} s")
    return text


@pytest.mark.slow
@pytest.mark.heavy  # five start-ups of the real run on 2 cores: about 3 min
@pytest.mark.timeout(900)
def test_sigterm_in_exam_teacher_and_training_then_resume_finishes_every_stage_once(tmp_path: Path):
    run_dir = tmp_path / "run"
    run = ["run", str(REPO / "configs/demo.yaml"), *TINY, "--run-dir", str(run_dir)]

    # 1. In round 0's exam (a Ray Data replica paused mid-batch), with a second run refused meanwhile.
    _stop_in("exam", run, run_dir, tmp_path, second=run)
    assert _stages(run_dir) == []

    # 2. In round 1's teacher stage, the local teacher server up.
    _stop_in("teacher", ["resume", str(run_dir)], run_dir, tmp_path)
    assert _stages(run_dir) == ["round_0/eval", "round_0/exam"]

    # 3. In round 1's training (a Ray Train worker paused after its first step).
    _stop_in("train", ["resume", str(run_dir)], run_dir, tmp_path)
    assert _stages(run_dir) == ["round_0/eval", "round_0/exam", "round_1/teacher", "round_1/train_data"]

    # `report` reads a run another process holds (here: this one).
    lock_run_dir(run_dir)
    try:
        report = subprocess.run([str(BIN / "rbyr-ray"), "report", str(run_dir)], env=_env(), cwd=tmp_path,
                                capture_output=True, text=True, timeout=300, check=False)
    finally:
        release_run_dir(run_dir)
    assert report.returncode == 0, report.stderr[-3000:]

    done = subprocess.run([str(BIN / "rbyr-ray"), "resume", str(run_dir)], env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-5000:]
    assert _stages(run_dir) == sorted(STAGES)
    entries = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(f"round_{e['round']}/{e['stage']}" for e in entries) == sorted(STAGES)  # each stage once
    logged = done.stdout + done.stderr
    for k, stage in [(0, "exam"), (0, "eval"), (1, "teacher"), (1, "train_data")]:
        assert f"round {k} {stage:<10} done earlier" in logged and f"round {k} {stage:<10} ...\n" not in logged
    for stage in ["train", "eval"]:
        assert f"round 1 {stage:<10} done in" in logged
    assert "test-only hooks are set" not in logged
