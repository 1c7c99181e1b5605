"""Errors a user acts on: the CLI prints their one-line message and exits 1, keeping completed work."""

from __future__ import annotations

import signal


class RunError(RuntimeError):
    """A stage could not produce its output (e.g. the teacher answered no request); the message says why."""


class RunDirBusy(RunError):
    """Another process (a run, resume, study or sweep trial) holds the run dir's lock: one writer per run dir."""


class Stopped(KeyboardInterrupt):
    """The process got SIGTERM, SIGINT or SIGHUP (rbyr_ray.stops): raised in the main thread so that every
    `finally` runs (the teacher server stops, Ray shuts down, no half stage is recorded). A KeyboardInterrupt, so
    that no `except Exception` on the way swallows it and so that a blocking `ray.get` (whose signal check turns
    only KeyboardInterrupt into an interrupt, and drops anything else) raises; it raises a plain
    KeyboardInterrupt, which `stops.stopped` maps back to the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.resume_hint: str | None = None  # e.g. "`rbyr-ray resume D` continues", set by the run it stopped

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP


class BrokenFile(ValueError):
    """A file the run needs cannot be read (a ledger that is not SQLite or is locked, a truncated or foreign Parquet
    file, an unreadable manifest, a model folder without weights): the message names it and what to do. A
    ValueError, so the CLI prints it as one line and exits 2, as for any bad input."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path  # the broken file, where known
