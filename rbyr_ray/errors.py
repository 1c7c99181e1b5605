"""Errors a user acts on: the CLI prints their one-line message and exits 1, keeping completed work."""


class RunError(RuntimeError):
    """A stage could not produce its output (e.g. the teacher answered no request); the message says why."""


class BrokenFile(ValueError):
    """A file the run needs cannot be read (a ledger that is not SQLite or is locked, a truncated or foreign Parquet
    file, an unreadable manifest, a model folder without weights): the message names it and what to do. A
    ValueError, so the CLI prints it as one line and exits 2, as for any bad input."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path  # the broken file, where known
