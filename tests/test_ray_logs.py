"""The filter of Ray-internal noise (rbyr_ray/ray_logs.py) against the real source of the noise: Ray Train V2's
PlacementGroupCleaner monitor loop, run in this process (no Ray started) with a state API that times out once."""

from __future__ import annotations

import importlib
import logging
import os
import tempfile

import pytest

from rbyr_ray import ray_logs

CLEANER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def cleaner_logger():
    """The cleaner's logger with a handler that keeps what passes (Ray's loggers do not propagate to caplog's)."""
    logger = logging.getLogger(CLEANER)
    before = list(logger.filters)
    logger.collected = Collect()
    logger.addHandler(logger.collected)
    yield logger
    logger.removeHandler(logger.collected)
    logger.filters = before


def _run_the_cleaners_monitor_loop(monkeypatch, timeouts: int) -> None:
    """Ray's own loop: `timeouts` state-API timeouts (each logs the warning), then the controller is found dead."""
    from ray.util.state.exception import RayStateApiException

    module = importlib.import_module(CLEANER)
    answers = iter([RayStateApiException("timed out")] * timeouts + [False])

    def is_actor_alive(actor_id, timeout):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(module, "is_actor_alive", is_actor_alive)
    cleaner = module.PlacementGroupCleaner("controller-id", check_interval_s=0.0, get_actor_timeout_s=1,
                                           stop_timeout=1)
    monkeypatch.setattr(cleaner, "_exit", lambda: None)  # not inside an actor: nothing to exit
    cleaner._monitor_loop()


def test_the_cleaners_polling_warning_is_dropped_counted_and_kept_in_the_file(monkeypatch, tmp_path, cleaner_logger):
    path = tmp_path / "filtered.log"
    filt = ray_logs.install(str(path))
    _run_the_cleaners_monitor_loop(monkeypatch, timeouts=3)
    cleaner_logger.warning("Failed to clean up placement group: boom")  # a real failure of the same logger
    messages = cleaner_logger.collected.messages
    assert not [m for m in messages if m.startswith("Failed to query Ray Train Controller")]
    assert "Failed to clean up placement group: boom" in messages  # only the noise is dropped
    assert filt.counts == {"PlacementGroupCleaner state-API polling": 3}
    kept = path.read_text().splitlines()
    assert len(kept) == 3 and all("Failed to query Ray Train Controller actor state" in line for line in kept)
    assert ray_logs.summary(str(path)) == (
        f"3 Ray-internal log lines were filtered (PlacementGroupCleaner state-API polling); kept in {path}")


def test_without_the_filter_the_warning_reaches_the_log(monkeypatch, cleaner_logger):
    cleaner_logger.filters = [f for f in cleaner_logger.filters if not isinstance(f, ray_logs.RayNoiseFilter)]
    _run_the_cleaners_monitor_loop(monkeypatch, timeouts=2)
    messages = cleaner_logger.collected.messages
    assert sum(m.startswith("Failed to query Ray Train Controller actor state") for m in messages) == 2


def test_the_workers_hook_installs_one_filter_writing_to_the_drivers_file(monkeypatch, tmp_path, cleaner_logger):
    monkeypatch.delenv(ray_logs.FILE_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the driver's file, made with mkstemp
    env = ray_logs.runtime_env_for_workers()
    path = env["env_vars"][ray_logs.FILE_ENV]
    assert path == os.environ[ray_logs.FILE_ENV] and path.startswith(str(tmp_path))
    module, _, name = env["worker_process_setup_hook"].rpartition(".")
    hook = getattr(importlib.import_module(module), name)  # what Ray's worker imports and calls
    hook()
    hook()
    filters = [f for f in cleaner_logger.filters if isinstance(f, ray_logs.RayNoiseFilter)]
    assert len(filters) == 1 and filters[0].path == path
    assert ray_logs.summary(path) is None  # nothing filtered yet: no line at the end of the run
    cleaner_logger.warning("Failed to query Ray Train Controller actor state. State API may be temporarily "
                           "unavailable. Continuing to monitor.")
    assert ray_logs.summary(path) == (
        f"1 Ray-internal log line was filtered (PlacementGroupCleaner state-API polling); kept in {path}")


def test_ray_datas_progress_blocks_are_off_in_a_log_file_and_on_in_a_terminal(monkeypatch):
    import sys

    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.enable_progress_bars
    try:
        ctx.enable_progress_bars = True
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        assert ray_logs.quiet_data_progress_in_logs() is False and ctx.enable_progress_bars  # a terminal: a bar
        monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
        assert ray_logs.quiet_data_progress_in_logs() is True and not ctx.enable_progress_bars
    finally:
        ctx.enable_progress_bars = before


def test_at_exit_the_summary_is_logged_once_and_an_empty_file_goes(tmp_path, caplog):
    logger = logging.getLogger("rbyr_ray.ray_utils")
    empty = tmp_path / "empty.log"
    empty.write_text("")
    with caplog.at_level(logging.INFO, logger="rbyr_ray.ray_utils"):
        ray_logs.log_summary_at_exit(str(empty), logger)
    assert not empty.exists() and not caplog.messages  # nothing filtered: no line, no file left behind
    kept = tmp_path / "kept.log"
    kept.write_text("12:00:00 pid=1 [PlacementGroupCleaner state-API polling] Failed to query ...\n" * 2)
    with caplog.at_level(logging.INFO, logger="rbyr_ray.ray_utils"):
        ray_logs.log_summary_at_exit(str(kept), logger)
    line = f"2 Ray-internal log lines were filtered (PlacementGroupCleaner state-API polling); kept in {kept}"
    assert caplog.messages == [line] and kept.exists()
