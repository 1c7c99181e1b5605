"""`rbyr-ray tasks`, `rbyr-ray tasks check FILE` and `rbyr-ray score`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="list the built-in tasks (tasks/builtin/*.yaml) with their split sizes; "
                                      "`tasks check FILE` checks a task file (docs/tasks.md)")
    p.add_argument("action", nargs="?", choices=["check"], help="check: validate a task file and show what it gives")
    p.add_argument("file", nargs="?", help="the task file to check (or a built-in task's name)")
    p.add_argument("--data-dir", default=None, help="benchmark folder (default: $RBYR_DATA_DIR or ../shared/data)")
    p.add_argument("--show", type=int, default=3, help="check: records shown")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("score", help="grade a JSONL file of {output, gold[, choices]} lines with our graders")
    p.add_argument("--task", required=True, help="a built-in task's name or a task file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)


def cmd_tasks(args: argparse.Namespace) -> int:
    from ..config import TaskConfig
    from . import TASKS, load_task

    if args.action == "check":
        if not args.file:
            raise ValueError("tasks check: name the task file: rbyr-ray tasks check FILE")
        return check_task_file(args.file, show=args.show, as_json=args.json, data_dir=args.data_dir)

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


def check_task_file(path: str, show: int = 3, as_json: bool = False, data_dir: str | None = None) -> int:
    """Load a task file as a run would (every gold answer graded against itself on the way) and print what a
    user needs to trust it: split sizes, the first records, the student prefix and the teacher's prompts."""
    from ..config import TaskConfig
    from . import TASKS, load_task

    task = {"name": path} if path in TASKS else {"file": path}
    data = load_task(TaskConfig(**task, data_dir=data_dir))
    record = data.train[0]
    wrong = "(a wrong rationale of the student)\nAnswer: ?"
    report = {
        "task": data.name, "file": data.source, "answer_type": data.answer_type,
        "max_new_tokens": data.max_new_tokens,
        "splits": {"train": len(data.train), "test": len(data.test), "val": len(data.val)},
        "records": [{"id": r.id, "question": r.question, "choices": list(r.choices), "answer": r.answer,
                     "solution": r.solution, "tags": r.tags} for r in data.train[:show]],
        "student_prefix": data.prompts.student_prefix(record), "stop": data.prompts.stop,
        "teacher_prompt": data.prompts.cot_messages(record),
        "feedback_prompt": data.prompts.feedback_messages(record, wrong),
        "gold_self_check": f"{len(data.train) + len(data.test) + len(data.val)} of "
                           f"{len(data.train) + len(data.test) + len(data.val)} gold answers grade correct",
    }
    if as_json:
        print(json.dumps(report))
        return 0
    s = report["splits"]
    print(f"task {data.name} ({data.answer_type}) from {path}")
    print(f"splits: train {s['train']}, test {s['test']}, val {s['val']}; max_new_tokens {data.max_new_tokens}")
    print("first records:")
    for r in report["records"]:
        choices = f" choices={r['choices']}" if r["choices"] else ""
        solution = f" solution={r['solution']!r}" if r["solution"] else ""
        tags = f" tags={r['tags']}" if r["tags"] else ""
        print(f"  {r['id']}: {r['question']!r}{choices} -> {r['answer']!r}{solution}{tags}")
    print(f"\nstudent prefix (its answer stops at {report['stop']!r}):\n" + _indent(report["student_prefix"]))
    for title, messages in (("teacher prompt (round 1)", report["teacher_prompt"]),
                            ("feedback prompt (rounds >= 2)", report["feedback_prompt"])):
        print(f"\n{title}:")
        for m in messages:
            print(f"  [{m['role']}]\n" + _indent(m["content"], 4))
    print(f"\n{report['gold_self_check']}; ok")
    return 0


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + line for line in text.split("\n"))


def score_lines(task: str, path: Path) -> list[dict]:
    from . import TASKS
    from .grading import answers_match, extract_answer

    if task in TASKS:
        answer_type = TASKS[task].answer_type
    elif task.endswith((".yaml", ".yml")) or Path(task).is_file():
        from .taskfile import read_task_file

        answer_type = read_task_file(task).spec.answer_type
    else:
        raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}, or a task file")
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
