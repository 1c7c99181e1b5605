#!/usr/bin/env python
"""Write the example task of docs/tasks.md: clock-time word problems with worked solutions, and its task file.

    python scripts/make_example_task.py [OUT_DIR]        # default: runs/example_task (git ignores runs/)

Seeded, so every run writes the same files: OUT_DIR/train.jsonl (JSON Lines), OUT_DIR/test.csv (CSV) and
OUT_DIR/clock.yaml (the task file). The problems are made here, not taken from any benchmark.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

NAMES = ["Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun"]
ACTIVITIES = ["reads", "practises the piano", "walks the dog", "paints", "studies", "cooks", "gardens", "runs"]

TASK_FILE = """\
# The example task of docs/tasks.md, written by scripts/make_example_task.py.
name: clock
description: minutes in a stretch of hours and minutes, with worked solutions
data:
  train: train.jsonl          # JSON Lines
  test: test.csv              # CSV; Parquet, a JSON array or s3://... work the same
fields:
  question: "{who} {activity} for {hours} hours and {minutes} minutes. How many minutes is that?"
  answer: total
  solution: worked            # the `reference` teacher answers from it; its "#### N" line is cut off
  id: qid
  tags: [hours]               # the report's weak spots per tag
answer_type: numeric
generation:
  max_new_tokens: 64
"""


def problem(rng: random.Random, qid: str) -> dict:
    hours, minutes = rng.randint(1, 9), rng.randint(1, 59)
    total = hours * 60 + minutes
    return {"qid": qid, "who": rng.choice(NAMES), "activity": rng.choice(ACTIVITIES), "hours": hours,
            "minutes": minutes, "total": total,
            "worked": f"{hours} hours is {hours} * 60 = {hours * 60} minutes. {hours * 60} + {minutes} = {total}."
                      f"\n#### {total}"}


def write_example(out_dir: str | Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """Write the data and the task file into out_dir; returns the task file's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train = [problem(rng, f"clock-{i}") for i in range(n_train)]
    test = [problem(rng, f"clock-{n_train + i}") for i in range(n_test)]
    (out / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in train))
    with open(out / "test.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(test[0]))
        writer.writeheader()
        writer.writerows(test)
    task = out / "clock.yaml"
    task.write_text(TASK_FILE)
    return task


if __name__ == "__main__":
    path = write_example(sys.argv[1] if len(sys.argv) > 1 else "runs/example_task")
    print(f"wrote {path} and its data; check it with: rbyr-ray tasks check {path}")
