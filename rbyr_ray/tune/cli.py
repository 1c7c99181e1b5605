"""`rbyr-ray tune`: run a Ray Tune sweep, or continue an interrupted one.

    rbyr-ray tune tune_configs/demo_sweep.yaml search.num_samples=2 rounds=1
    rbyr-ray tune --resume runs/tune/demo_sweep
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="Ray Tune sweep: rbyr-ray tune TUNE_CONFIG [key=value ...] | --resume SWEEP_DIR")
    p.add_argument("tune_config", nargs="?", help="tune YAML (e.g. tune_configs/demo_sweep.yaml)")
    p.add_argument("overrides", nargs="*",
                   help="search.num_samples=4, scheduler.name=asha, space.train.lr='{grid: [1e-4]}'; "
                        "other keys (rounds=1, task.arith.n_train=30) override the experiment")
    p.add_argument("--resume", metavar="SWEEP_DIR", default=None,
                   help="continue an interrupted sweep (the folder `rbyr-ray tune` printed)")
    p.add_argument("--json", action="store_true", help="print the sweep summary as JSON on the last line")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from .sweep import tune

    summary = tune(args.tune_config, overrides=args.overrides, resume=args.resume)
    if args.json:
        print(json.dumps(summary, default=str))
    if summary.get("unfinished_trials"):
        return 130  # interrupted: what ran is kept, --resume continues
    return 1 if summary.get("errors") else 0
