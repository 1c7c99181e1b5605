"""`rbyr-ray tasks` and `rbyr-ray score`, run as subprocesses the way a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rbyr_ray.tasks import resolve_data_dir


def rbyr(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RBYR_DATA_DIR=str(resolve_data_dir()))
    return subprocess.run([sys.executable, "-m", "rbyr_ray.cli", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=120)


def test_tasks_json_lists_split_sizes():
    done = rbyr("tasks", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "arith": {"train": 300, "test": 200},
        "gsm8k": {"train": 7473, "test": 1319},
        "svamp": {"train": 700, "test": 300},
        "multiarith": {"train": 420, "test": 180},
        "asdiv": {"train": 1607, "test": 486},
        "csqa": {"train": 9741, "test": 1221},
        "strategyqa": {"train": 1603, "test": 687},
    }


def test_tasks_with_a_missing_data_dir_fails_clearly(tmp_path):
    done = rbyr("tasks", "--data-dir", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_score_numeric_json(tmp_path):
    path = _jsonl(tmp_path / "out.jsonl", [
        {"output": "3 * 4 = 12. 12 + 6 = 18.\nAnswer: 18.0", "gold": "18"},
        {"output": "The answer is 1,234 dollars.", "gold": 1234},
        {"output": "I am not sure.", "gold": "7"},
    ])
    done = rbyr("score", "--task", "gsm8k", path, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["n"], result["correct"]) == (3, 2) and abs(result["accuracy"] - 2 / 3) < 1e-9
    assert [(v["line"], v["predicted"], v["correct"]) for v in result["verdicts"]] == [
        (1, "18", True), (2, "1234", True), (3, None, False)]


def test_score_csqa_uses_choices_and_prints_text(tmp_path):
    choices = ["ignore", "enforce", "authoritarian", "yell at", "avoid"]
    path = _jsonl(tmp_path / "out.jsonl", [
        {"output": "Answer: avoid", "gold": "e", "choices": choices},
        {"output": "So the answer is (b).", "gold": "a", "choices": choices},
    ])
    done = rbyr("score", "--task", "csqa", path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "OK" in lines[0] and "BAD" in lines[1]
    assert lines[-1] == "accuracy 0.5000 (1/2)"


def test_score_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"output": "Answer: yes", "gold": "yes"}\n{"output": "no gold"}\n')
    done = rbyr("score", "--task", "strategyqa", str(path))
    assert done.returncode == 2 and f"{path}:2:" in done.stderr
