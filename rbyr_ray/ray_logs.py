"""Ray-internal log lines that read like failures but are not: dropped where they are logged, counted, and
summed up in one line at the end of a run.

Ray Train V2's PlacementGroupCleaner (a detached actor) polls the state API with a short timeout and logs a
warning each time the poll times out, which on a loaded 2-core machine is every few seconds; the run itself is
fine. The filter runs in every Ray worker of the job (installed by `worker_process_setup_hook`, see
`runtime_env_for_workers`) and on the driver. Each dropped line is appended, whole, to one small file named by
$RBYR_RAY_FILTERED_LOG, so the count covers every process that shares that file system and nothing is lost
(on a multi-node cluster another node's dropped lines are in the same path on that node's disk, not counted).
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
import time

FILE_ENV = "RBYR_RAY_FILTERED_LOG"

# (logger, message start, what it is) - the lines dropped; everything else from these loggers passes.
NOISE = (
    ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
     "Failed to query Ray Train Controller actor state", "PlacementGroupCleaner state-API polling"),
)


class RayNoiseFilter(logging.Filter):
    """Drops the NOISE records, counts them per kind and appends each to `path` (if given)."""

    def __init__(self, path: str | None = None):
        super().__init__()
        self.path = path
        self.counts: collections.Counter[str] = collections.Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        for name, start, what in NOISE:
            if record.name == name and record.getMessage().startswith(start):
                self.counts[what] += 1
                self._keep(record, what)
                return False
        return True

    def _keep(self, record: logging.LogRecord, what: str) -> None:
        if not self.path:
            return
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} pid={record.process} " \
               f"[{what}] {record.getMessage()}\n"
        try:  # one short O_APPEND write per line: processes appending at once do not interleave
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError:
            pass  # a log filter must never fail the process; the line is then only counted here


def install(path: str | None = None) -> RayNoiseFilter:
    """Attach one filter to each NOISE logger of this process (idempotent per logger)."""
    path = path if path is not None else os.environ.get(FILE_ENV)
    filt = RayNoiseFilter(path)
    for name, _, _ in NOISE:
        logger = logging.getLogger(name)
        logger.filters = [f for f in logger.filters if not isinstance(f, RayNoiseFilter)]
        logger.addFilter(filt)
    return filt


def setup_worker() -> None:
    """Ray's `worker_process_setup_hook`: runs once in every worker process of the job."""
    install()


def runtime_env_for_workers() -> dict:
    """The runtime_env that installs the filter in the job's workers, with a fresh file for the dropped lines.

    The driver gets the filter too and keeps the file's path in $RBYR_RAY_FILTERED_LOG for `summary()`.
    """
    fd, path = tempfile.mkstemp(prefix="rbyr-ray-filtered-", suffix=".log")
    os.close(fd)
    os.environ[FILE_ENV] = path
    install(path)
    return {"worker_process_setup_hook": f"{__name__}.setup_worker", "env_vars": {FILE_ENV: path}}


def quiet_data_progress_in_logs() -> bool:
    """Ray Data's progress on the driver: a progress bar in a terminal; nothing when stdout is a file or a pipe.

    Without a terminal Ray Data logs a 7-line progress block every 10 s per dataset (hundreds of lines in a
    demo log, most saying "0/?"), while the stages log their own progress ("exam: 48/200 rows, 9.5 tok/s").
    Returns whether it switched them off.
    """
    import sys

    if sys.stdout.isatty():
        return False
    from ray.data import DataContext
    from ray.util.debug import log_once

    DataContext.get_current().enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # Ray's one-time "Progress bars disabled. To enable..." line
    return True


def log_summary_at_exit(path: str, logger: logging.Logger) -> None:
    """At the driver's exit: the summary line if anything was filtered, else the empty file goes."""
    line = summary(path)
    if line:
        logger.info(line)
        return
    try:
        if os.path.getsize(path) == 0:
            os.remove(path)
    except OSError:
        pass


def summary(path: str | None = None) -> str | None:
    """One line saying how many lines were filtered and of which kind, or None when nothing was."""
    path = path or os.environ.get(FILE_ENV)
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as fh:
        kinds = collections.Counter(line.split("[", 1)[1].split("]", 1)[0] for line in fh if "[" in line)
    if not kinds:
        return None
    n = sum(kinds.values())
    what = ", ".join(f"{k}: {v}" if len(kinds) > 1 else k for k, v in kinds.most_common())
    return f"{n} Ray-internal log line{'s were' if n != 1 else ' was'} filtered ({what}); kept in {path}"
