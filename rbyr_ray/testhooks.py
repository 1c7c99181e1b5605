"""Test-only fault hooks: environment variables named `RBYR_TEST_<NAME>`.

Tests inject faults into the real pipeline through the environment, because Ray workers inherit it. The
`RBYR_TEST_` prefix marks such a variable as never meant for a real run, and the first read in each process
(driver or Ray worker) logs one warning listing every one that is set, so an exported hook cannot silently
change a real run.

    from rbyr_ray.testhooks import test_hook
    text = test_hook("EXAM_FAIL_ON")  # the value of $RBYR_TEST_EXAM_FAIL_ON, or None when unset or empty
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PREFIX = "RBYR_TEST_"

_warned = False


def env_name(name: str) -> str:
    """The variable that holds hook `name` (e.g. "EXAM_FAIL_ON" -> "RBYR_TEST_EXAM_FAIL_ON")."""
    return PREFIX + name


def warn_if_set() -> list[str]:
    """Log one warning per process naming every `RBYR_TEST_*` variable that is set; returns their names."""
    global _warned
    names = sorted(k for k, v in os.environ.items() if k.startswith(PREFIX) and v)
    if names and not _warned:
        _warned = True
        log.warning("test-only hooks are set (%s): they inject faults; unset them for a real run", ", ".join(names))
    return names


def test_hook(name: str) -> str | None:
    """The value of `$RBYR_TEST_<name>`, None when unset or empty; warns once per process if any hook is set."""
    warn_if_set()
    return os.environ.get(env_name(name)) or None


# pytest would otherwise collect `test_hook` as a test wherever a test module imports it.
test_hook.__test__ = False  # type: ignore[attr-defined]
