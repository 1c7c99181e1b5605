"""Errors a user acts on: the CLI prints their one-line message and exits 1, keeping completed work."""


class RunError(RuntimeError):
    """A stage could not produce its output (e.g. the teacher answered no request); the message says why."""
