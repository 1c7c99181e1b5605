"""`rbyr-ray run`, `rbyr-ray resume` and `rbyr-ray report`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a multi-round experiment: rbyr-ray run CONFIG [key=value ...]")
    p.add_argument("config", help="experiment YAML (e.g. configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.reflection.weight=0.3 rounds=4")
    p.add_argument("--run-dir", default=None, help="run directory; an existing one is continued")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue a run at its first incomplete stage")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="memory settings only (docs/memory.md), e.g. after a stage was "
                   "killed for memory: train.max_tokens_per_micro_batch=1024 train.gradient_checkpointing=true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--recompute", metavar="ROUND_K/STAGE", default=None,
                   help="compute this completed stage (e.g. round_2/teacher) and every later one again, e.g. after "
                        "its file broke; teacher answers still come from the ledger")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("report", help="rebuild a run's table and report.png, with weak spots per question tag")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)


def cmd_run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .rounds import run

    cfg = load_config(args.config, args.overrides)
    summary = run(cfg, run_dir=args.run_dir)
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from .rounds import resume

    summary = resume(args.run_dir, recompute=args.recompute, overrides=args.overrides)
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import rebuild

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    rebuild(run_dir)
    return 0
