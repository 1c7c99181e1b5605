"""Golden files of the built-in tasks: the records every split loads and the prompts they render.

    RBYR_DATA_DIR=/work/shared/data .venv/bin/python tests/golden/make_golden.py    # regenerates them

Writes, per built-in task (arith and the six benchmarks read from $RBYR_DATA_DIR):
- records/<task>.jsonl: one `split` line per split (its size, the SHA-256 of all its records and one short
  hash per chunk of CHUNK records, so that a difference is located without storing every record), then the
  first N_FULL records of each split in full (id, question, answer, choices, solution, tags);
- prompts/<task>.jsonl: for a few records, the student prefix (without and with few-shot demonstrations),
  the teacher's CoT messages (with and without its demonstrations) and its feedback messages for the fixed
  WRONG rationale (with and without the hint), all built by the code the run uses (`teacher.stage`'s
  request building, `prompts.student_prefix`).

tests/test_golden_tasks.py checks today's code against these files exactly. Regenerate them only for a
deliberate change of a task's records or prompts, and say so in the commit (the diff shows what moved).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent
CHUNK = 100    # records per chunk hash
N_FULL = 20    # records of each split stored in full
N_PROMPT = 2   # records per split whose prompts are stored
# One fixed wrong rationale for every task's feedback prompt: two lines, so the folding is pinned too.
WRONG = "I add the two numbers: 12 + 7 = 20.\nSo the answer is 20, since (b) does not fit."


def record_dict(record) -> dict:
    row = dataclasses.asdict(record)
    row["choices"] = list(record.choices)
    return row


def record_line(record) -> str:
    return json.dumps(record_dict(record), sort_keys=True, ensure_ascii=False)


def split_summary(records: list) -> dict:
    lines = [record_line(r) for r in records]
    chunks = [hashlib.sha256("\n".join(lines[i:i + CHUNK]).encode()).hexdigest()[:16]
              for i in range(0, len(lines), CHUNK)]
    return {"n": len(records), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(), "chunk": CHUNK,
            "chunks": chunks}


def load(task: str):
    from rbyr_ray.config import TaskConfig
    from rbyr_ray.tasks import load_task

    return load_task(TaskConfig(name=task))


def record_lines(task: str, data=None) -> list[dict]:
    """The records/<task>.jsonl lines, as dicts."""
    data = data or load(task)
    out: list[dict] = []
    for split in ("train", "test", "val"):
        records = data.split(split)
        out.append({"kind": "split", "split": split, **split_summary(records)})
        out += [{"kind": "record", "split": split, "index": i, "record": record_dict(r)}
                for i, r in enumerate(records[:N_FULL])]
    return out


def prompt_records(records: list) -> list:
    """The first N_PROMPT records, and for arith the first with a multiplication and with a division too (the
    sentences whose wording matters most to a teacher)."""
    chosen = list(records[:N_PROMPT])
    for op in ("mul", "div"):
        if not any(op in r.tags.get("ops", "") for r in chosen):
            chosen += [r for r in records if op in r.tags.get("ops", "").split(",")][:1]
    return chosen


def prompt_lines(task: str, data=None) -> list[dict]:
    """The prompts/<task>.jsonl lines, as dicts: each names the record, the prompt and its rendering."""
    from rbyr_ray.config import TeacherConfig
    from rbyr_ray.tasks import TASKS, gold_rationale
    from rbyr_ray.tasks.prompts import student_prefix
    from rbyr_ray.teacher.stage import build_requests

    data = data or load(task)
    spec = TASKS[task]
    out: list[dict] = [{"kind": "spec", "task": task, "answer_type": spec.answer_type,
                        "max_new_tokens": spec.max_new_tokens}]
    # Student demonstrations: two training records with their reference rationale (no task sets any today;
    # this pins how the prefix renders them).
    demos = [(r, gold_rationale(task, r) or "") for r in data.train[N_PROMPT:N_PROMPT + 2]]

    def messages(records, cfg, mistakes=None):
        # The task's prompts as a run passes them (TaskData.prompts), else, in code that predates them, its name.
        rows = build_requests(records, cfg, spec.answer_type, mistakes, seed=0,
                              task=getattr(data, "prompts", None) or task)
        return [json.loads(row["messages"]) for row in rows]

    for split in ("train", "test"):
        records = prompt_records(data.split(split))
        mistakes = {r.id: [WRONG] for r in records}
        rendered = {
            "student_prefix": [student_prefix(r) for r in records],
            "student_prefix_few_shot": [student_prefix(r, demos) for r in records],
            "teacher_cot": messages(records, TeacherConfig()),
            "teacher_cot_no_demos": messages(records, TeacherConfig(few_shot=False)),
            "teacher_feedback": messages(records, TeacherConfig(), mistakes),
            "teacher_feedback_no_hint": messages(records, TeacherConfig(use_hint=False), mistakes),
        }
        for name, values in rendered.items():
            out += [{"kind": "prompt", "id": r.id, "name": name, "value": v} for r, v in zip(records, values)]
    return out


def dump(lines: list[dict]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def main() -> int:
    from rbyr_ray.tasks import TASKS

    for sub in ("records", "prompts"):
        (GOLDEN / sub).mkdir(exist_ok=True)
    total = 0
    for task in TASKS:
        data = load(task)
        for sub, lines in (("records", record_lines(task, data)), ("prompts", prompt_lines(task, data))):
            path = GOLDEN / sub / f"{task}.jsonl"
            path.write_text(dump(lines), encoding="utf-8")
            total += path.stat().st_size
            print(f"{path.relative_to(GOLDEN.parent.parent)}: {len(lines)} lines, {path.stat().st_size} bytes")
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
