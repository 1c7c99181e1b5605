"""`rbyr-ray eval`: evaluate a student on a task's split with the Ray Data exam pipeline.

    rbyr-ray eval --task arith --model smollm2-135m --limit 50 --json
    rbyr-ray eval --task gsm8k --model runs/x/round2/model --engine vllm --samples 4 --out exam.parquet

Prints the accuracy and writes the graded rows to Parquet; with --json the last line is
{"task": ..., "model": ..., "engine": ..., "n": ..., "accuracy": ..., "tokens_per_s": ...}.
One sample is greedy decoding (the evaluation); --samples K > 1 samples with exam.temperature/top_k.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a student on a task split (Ray Data exam pipeline)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True,
                   help="arith, gsm8k, svamp, multiarith, asdiv, csqa, strategyqa, or a task file (docs/tasks.md)")
    p.add_argument("--model", default="smollm2-135m",
                   help="embedded name, HF folder, .gguf file, LoRA adapter folder (default: smollm2-135m)")
    p.add_argument("--engine", choices=["hf", "vllm"], default=None, help="default: exam.engine of the config")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--samples", type=int, default=1, help="samples per question (1 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's budget")
    p.add_argument("--config", default=None, help="an experiment YAML for the exam/student/ray sections")
    p.add_argument("--out", default=None, help="graded Parquet (default: runs/eval/<task>-<model>-<engine>.parquet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. exam.replicas=2")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..tasks import load_task, task_overrides
    from .exam import run_exam

    overrides = [*args.overrides, *task_overrides(args.task)]
    if args.engine:
        overrides.append(f"exam.engine={args.engine}")
    cfg = load_config(args.config, overrides)
    if args.samples < 1:
        raise ValueError("--samples must be >= 1")
    data = load_task(cfg.task, seed=cfg.seed)
    records = data.split(args.split)
    if args.split == "val" and not records:
        raise ValueError("the val split is empty: set task.val_fraction>0")
    if args.limit:
        records = records[: args.limit]
    spec = data  # the loaded task: answer type and generation budget, built-in or task file
    max_new = args.max_new_tokens or cfg.eval.max_new_tokens or spec.max_new_tokens
    out = args.out or (Path("runs") / "eval" /
                       f"{data.name}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(args.model).name)}-"
                       f"{cfg.exam.engine}.parquet")
    result = run_exam(records, args.model, cfg, answer_type=spec.answer_type, samples=args.samples,
                      greedy=args.samples == 1, max_new_tokens=max_new, out_path=out, seed=args.seed,
                      task=data.prompts)
    correct = int(result.rows["correct"].sum())
    print(f"{args.task} {args.split}: accuracy {result.accuracy:.4f} ({correct}/{len(result.rows)} rows correct, "
          f"{result.n_failed} failed) model {args.model} engine {result.engine}; "
          f"{result.tokens_per_s:.1f} tok/s, {result.wall_s:.1f} s; rows: {out}")
    if args.json:
        print(json.dumps({"task": args.task, "model": args.model, "engine": result.engine,
                          "n": result.n_questions, "accuracy": round(result.accuracy, 6),
                          "tokens_per_s": round(result.tokens_per_s, 3)}))
    return 0
