"""`rbyr-ray teacher serve` (the local teacher server) and `rbyr-ray teacher annotate` (the round-1 stage alone).

    rbyr-ray teacher serve --backend solver --port 8000 --latency-ms 100 --error-rate 0.1
    rbyr-ray teacher annotate --task arith --limit 50 --samples 2 --base-url http://127.0.0.1:8000/v1 \\
        --model rbyr-local-teacher --ledger teacher.sqlite --out teacher.parquet --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="the teacher: local server and annotation")
    tsub = p.add_subparsers(dest="teacher_command", metavar="SUBCOMMAND")
    tsub.required = True

    s = tsub.add_parser("serve", help="an OpenAI-compatible local teacher server (solver or reference)")
    s.add_argument("--backend", choices=["solver", "reference", "student"], default="solver",
                   help="student: the student model itself answers (STaR-style), needs --model-path")
    s.add_argument("--model-path", default=None, help="HF folder of the student, for --backend student")
    s.add_argument("--task", default=None, help="the task the reference backend answers: a built-in task's name or "
                                                "a task file (default: arith)")
    s.add_argument("--data-dir", default=None, help="benchmark folder for the reference backend")
    s.add_argument("--task-config", default=None, help="YAML of a task section (arith settings, templates)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless you mean otherwise)")
    s.add_argument("--port", type=int, default=8000, help="0 = a free port, announced on stdout")
    s.add_argument("--model", default="rbyr-local-teacher", help="the model id /v1/models reports")
    s.add_argument("--latency-ms", type=float, default=0.0)
    s.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered HTTP 500")
    s.add_argument("--rate-limit-rate", type=float, default=0.0, help="fraction answered HTTP 429")
    s.add_argument("--wrong-rate", type=float, default=0.0, help="fraction of choices with a wrong answer")
    s.add_argument("--garbage-rate", type=float, default=0.0, help="fraction of choices that are unparseable")
    s.add_argument("--false-step-rate", type=float, default=0.0,
                   help="fraction of choices with the right answer after one false intermediate step")
    s.add_argument("--feedback-talk-rate", type=float, default=0.0,
                   help="fraction of choices to feedback prompts whose right answer talks about the student")
    s.add_argument("--truncate-rate", type=float, default=0.0,
                   help="fraction of choices cut off in the middle (finish_reason 'length')")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--ignore-n", action="store_true", help="answer one choice whatever n asks (as some servers do)")
    s.add_argument("--hold-after", type=int, default=None, metavar="N",
                   help="tests: answer the first N requests, hold every later one unanswered")
    key = s.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None, help="require this bearer token")
    key.add_argument("--api-key-env", default=None, help="require the bearer token held in this variable")
    s.set_defaults(func=cmd_serve)

    a = tsub.add_parser("annotate", help="ask the teacher for rationales of a task's questions (round 1 alone)")
    a.add_argument("--task", required=True, help="a built-in task's name or a task file")
    a.add_argument("--split", default="train", choices=["train", "test", "val"])
    a.add_argument("--limit", type=int, default=None, help="only the first N questions")
    a.add_argument("--samples", type=int, default=None, help="k rationales per question")
    a.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    a.add_argument("--model", default=None)
    a.add_argument("--ledger", default=None, help="SQLite ledger (default: teacher.ledger or teacher_ledger.sqlite)")
    a.add_argument("--out", default=None, help="write the rows to this .parquet file")
    a.add_argument("--config", default=None, help="experiment YAML for the teacher/task/ray sections")
    a.add_argument("--data-dir", default=None)
    a.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    a.add_argument("overrides", nargs="*", help="config overrides such as teacher.concurrency=32")
    a.set_defaults(func=cmd_annotate)


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    import yaml

    from ..config import TaskConfig
    from .server import Faults, build_backend, make_app, serve

    task_data: dict = {}
    if args.task_config:
        with open(args.task_config) as fh:
            task_data = yaml.safe_load(fh) or {}
    if args.task:  # a built-in task's name, or a task file (`reference` answers from its worked solutions)
        from ..tasks import TASKS

        task_data.update({"name": args.task, "file": None} if args.task in TASKS else {"name": None, "file": args.task})
    if args.data_dir:
        task_data["data_dir"] = args.data_dir
    task_cfg = TaskConfig.model_validate(task_data)
    for name in ("error_rate", "rate_limit_rate", "wrong_rate", "garbage_rate", "false_step_rate",
                 "feedback_talk_rate", "truncate_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1]")
    if (args.error_rate + args.rate_limit_rate > 1
            or args.wrong_rate + args.garbage_rate + args.false_step_rate + args.feedback_talk_rate
            + args.truncate_rate > 1):
        raise ValueError("--error-rate + --rate-limit-rate and --wrong-rate + --garbage-rate + --false-step-rate "
                         "+ --feedback-talk-rate + --truncate-rate must each be <= 1")
    api_key = args.api_key
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: the variable is not set")
    backend = build_backend(args.backend, task_cfg, args.model_path)
    faults = Faults(args.latency_ms, args.error_rate, args.rate_limit_rate, args.wrong_rate, args.garbage_rate,
                    args.false_step_rate, args.feedback_talk_rate, args.truncate_rate)
    app = make_app(backend, model=args.model, faults=faults, api_key=api_key, seed=args.seed,
                   ignore_n=args.ignore_n, hold_after=args.hold_after)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the teacher server is reachable beyond this machine", args.host)

    def announce(line: str) -> None:
        print(line, flush=True)

    try:
        asyncio.run(serve(app, args.host, args.port, announce))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..ray_utils import init_ray
    from ..tasks import load_task, task_overrides
    from .ledger import check_ledger
    from .stage import annotate

    overrides = [*task_overrides(args.task), *args.overrides]
    if args.data_dir:
        overrides.append(f"task.data_dir={args.data_dir}")
    if args.samples:
        overrides.append(f"teacher.samples={args.samples}")
    if args.model:
        overrides.append(f"teacher.model={args.model}")
    cfg = load_config(args.config, overrides)
    data = load_task(cfg.task, seed=cfg.seed)
    records = data.split(args.split)
    if args.limit:
        records = records[: args.limit]
    ledger = args.ledger or cfg.teacher.ledger or "teacher_ledger.sqlite"
    check_ledger(ledger)  # a broken or locked ledger: one line, before Ray starts
    if args.json:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False  # keep stdout for the summary
    init_ray(cfg.ray)
    result = annotate(records, cfg.teacher, answer_type=data.answer_type, base_url=args.base_url,
                      ledger_path=ledger, out_path=args.out, seed=cfg.seed, task=data.prompts)
    if result.budget_message:
        print(result.budget_message, file=sys.stderr)
    if args.json:
        print(json.dumps(result.summary()), flush=True)
    else:
        s = result.summary()
        print(f"{s['questions']} questions: {s['accepted']} accepted, {s['rejected']} rejected, {s['failed']} failed; "
              f"{s['requests_sent']} requests sent, {s['ledger_hits']} ledger hits; ledger {ledger}"
              + (f"; rows in {result.out_path}" if result.out_path else ""))
    return 0
