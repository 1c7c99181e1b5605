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

from .config import ConfigError
from .errors import RunError

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
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"rbyr-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"rbyr-ray {args.command}: failed: {exc}; completed work is kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rbyr-ray {args.command}: interrupted; completed work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
