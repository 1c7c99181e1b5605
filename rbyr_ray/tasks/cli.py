"""`rbyr-ray tasks` and `rbyr-ray score`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="list the tasks with their split sizes")
    p.add_argument("--data-dir", default=None, help="benchmark folder (default: $RBYR_DATA_DIR or ../shared/data)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("score", help="grade a JSONL file of {output, gold[, choices]} lines with our graders")
    p.add_argument("--task", required=True)
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)


def cmd_tasks(args: argparse.Namespace) -> int:
    from ..config import TaskConfig
    from . import TASKS, load_task

    sizes = {}
    for name in TASKS:
        data = load_task(TaskConfig(name=name, data_dir=args.data_dir))
        sizes[name] = {"train": len(data.train), "test": len(data.test)}
    if args.json:
        print(json.dumps(sizes))
    else:
        for name, s in sizes.items():
            print(f"{name:<11} train {s['train']:>5}  test {s['test']:>5}  {TASKS[name].description}")
    return 0


def score_lines(task: str, path: Path) -> list[dict]:
    from . import TASKS
    from .grading import answers_match, extract_answer

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    answer_type = TASKS[task].answer_type
    verdicts = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                output, gold = str(item["output"]), str(item["gold"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with 'output' and 'gold' ({exc})") from None
            predicted = extract_answer(answer_type, output, item.get("choices") or ())
            verdicts.append({"line": lineno, "predicted": predicted, "gold": gold,
                             "correct": answers_match(answer_type, predicted, gold)})
    return verdicts


def cmd_score(args: argparse.Namespace) -> int:
    verdicts = score_lines(args.task, Path(args.file))
    correct = sum(v["correct"] for v in verdicts)
    accuracy = correct / len(verdicts) if verdicts else 0.0
    if args.json:
        print(json.dumps({"task": args.task, "n": len(verdicts), "correct": correct, "accuracy": accuracy,
                          "verdicts": verdicts}))
    else:
        for v in verdicts:
            print(f"line {v['line']:>5}  {'OK ' if v['correct'] else 'BAD'}  predicted={v['predicted']!r} gold={v['gold']!r}")
        print(f"accuracy {accuracy:.4f} ({correct}/{len(verdicts)})")
    return 0
