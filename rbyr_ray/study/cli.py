"""`rbyr-ray study`: run every preset of a study with every seed, then write the comparison.

    rbyr-ray study configs/study_arith.yaml
    rbyr-ray study configs/study_arith.yaml seeds=[0] --report     # rebuild results from the run dirs only
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="presets x seeds, compared: rbyr-ray study STUDY_CONFIG [key=value ...]")
    p.add_argument("study_config", help="study YAML (e.g. configs/study_arith.yaml)")
    p.add_argument("overrides", nargs="*",
                   help="applied to every preset's experiment (rounds=1); seeds=[0,1] and out=DIR set the study")
    p.add_argument("--report", action="store_true", help="only rebuild results.md/.png/.json from the run dirs")
    p.set_defaults(func=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    from .results import to_markdown, write_results
    from .study import load_study, run_study

    spec = load_study(args.study_config, args.overrides)
    agg = write_results(spec) if args.report else run_study(spec)
    print(to_markdown(spec, agg))
    print(f"written: {spec.out_dir() / 'results.md'}, results.png, results.json")
    return 0
