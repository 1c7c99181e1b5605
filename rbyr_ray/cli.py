"""`rbyr-ray`: one entry point, one sub-command per job. Each concern registers its own sub-commands;
heavy imports (torch, ray) happen inside the handlers so `rbyr-ray --help` stays fast.

    rbyr-ray run configs/demo.yaml train.reflection.weight=0.3 rounds=4
    rbyr-ray eval --task arith --model smollm2-135m --limit 50 --json
    rbyr-ray teacher serve --backend solver --port 8000
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import stops
from .config import ConfigError
from .errors import RunDirBusy, RunError

# Modules that define `register(subparsers)`; the order is the order of `rbyr-ray --help`.
COMMAND_MODULES = [
    "rbyr_ray.loop.cli",
    "rbyr_ray.student.cli",
    "rbyr_ray.teacher.cli",
    "rbyr_ray.tune.cli",
    "rbyr_ray.study.cli",
    "rbyr_ray.tasks.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbyr-ray", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that concern is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # SIGTERM, SIGINT, SIGHUP: unwind (the teacher server and Ray stopped), one line, exit 128 + the signal.
    previous = stops.install()
    try:
        return _run(args)
    finally:
        stops.restore(previous)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except RunDirBusy as exc:
        print(f"rbyr-ray {args.command}: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"rbyr-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"rbyr-ray {args.command}: failed: {exc}; completed work is kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # a stop signal (stops.py), or Ctrl-C as a library raised it
        stops.stopping()
        stop = stops.stopped(exc)
        _shutdown_ray()
        hint = f"; completed work is kept; {stop.resume_hint}" if stop.resume_hint else ""
        print(f"rbyr-ray {args.command}: stopped by {stop.signal_name}{hint}", file=sys.stderr)
        return stop.exit_code


def _shutdown_ray() -> None:
    """Stop a Ray this process started (its workers with it), or leave a cluster it joined, now rather than at
    exit; no further signal interrupts it (stops.py ignores them while stopping)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
