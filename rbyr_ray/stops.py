"""Clean stops: SIGTERM, SIGINT and SIGHUP raise `errors.Stopped` in the main thread, so a stopped run unwinds
through its `finally` blocks (the local teacher server stops, Ray shuts down, no half stage is recorded) and
`rbyr-ray` exits 143, 130 or 129 with one line. SIGTERM is how `ray job stop`, Kubernetes and Slurm stop a job.

    stops.install()            # rbyr_ray.cli.main; init_ray installs them again after ray.init, which
                               # replaces SIGTERM's handler (Ray's own, then its core worker's native one)
    with stops.deferred():     # a manifest entry and its metrics line are written together
        ...

The first signal raises; later ones are ignored while the stop unwinds (SIGKILL still ends it at once).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import Stopped
from .testhooks import test_hook

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_stopping = False
_received: int | None = None  # the first stop signal
_defer_depth = 0
_pending: int | None = None


def _on_signal(signum: int, frame) -> None:
    global _stopping, _pending, _received
    if _stopping:
        return
    _received = _received or signum
    if _defer_depth:
        _pending = signum
        return
    _stopping = True
    raise Stopped(signum)


def stopped(exc: KeyboardInterrupt) -> Stopped:
    """`exc` as the stop it stands for: a KeyboardInterrupt that a library raised instead of ours (ray.get, or
    Ray Train's own Ctrl-C handling) means the signal received, or SIGINT."""
    return exc if isinstance(exc, Stopped) else Stopped(_received or signal.SIGINT)


def install() -> dict:
    """Route the stop signals to `Stopped`; returns the handlers they had (for `restore`). Only the main thread
    can (a Tune trial's thread keeps Tune's handling): elsewhere nothing changes and {} is returned."""
    global _stopping, _pending, _received
    if threading.current_thread() is not threading.main_thread():
        return {}
    _stopping, _pending, _received = False, None, None
    return {signum: signal.signal(signum, _on_signal) for signum in SIGNALS}


def restore(previous: dict) -> None:
    """Put back the handlers `install` replaced (main() called in-process, e.g. by a test)."""
    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, handler)


def stopping() -> None:
    """From now on the stop signals are ignored: the process is unwinding (e.g. Ray Train's own Ctrl-C handler
    already turned a SIGINT into KeyboardInterrupt)."""
    global _stopping
    _stopping = True


def installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _on_signal


@contextmanager
def deferred() -> Iterator[None]:
    """A stop signal that arrives inside the block is raised when it ends."""
    global _defer_depth, _pending, _stopping
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
        if not _defer_depth and _pending is not None:
            signum, _pending, _stopping = _pending, None, True
            raise Stopped(signum)


def pause_if_asked(stage: str) -> None:
    """Tests only: with $RBYR_TEST_PAUSE_IN=STAGE:MARKER, the stage (in whichever process, driver or Ray
    worker, reaches this point) writes MARKER with its pid and blocks, so that a test stops the run at a point
    it controls rather than after a timer."""
    value = test_hook("PAUSE_IN")
    name, _, marker = (value or "").partition(":")
    if name != stage or not marker:
        return
    log.warning("test hook: pausing in the %s stage (pid %d) until stopped", stage, os.getpid())
    Path(marker).write_text(f"{os.getpid()}\n")
    while True:
        time.sleep(0.1)
