"""Every built-in task loads exactly the records and renders exactly the prompts of its golden files
(tests/golden/, written by `python tests/golden/make_golden.py`; see its docstring). A deliberate change of a
task's records or prompts regenerates them in the same commit; anything else that moves them is a bug."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from rbyr_ray.tasks import TASKS

GOLDEN = Path(__file__).resolve().parent / "golden"
REGENERATE = "a deliberate change regenerates the goldens: python tests/golden/make_golden.py"


def _make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_golden", module)
    spec.loader.exec_module(module)
    return module


MAKE = _make_golden()


@functools.cache
def _data(task: str):
    return MAKE.load(task)


def _golden(sub: str, task: str) -> list[dict]:
    path = GOLDEN / sub / f"{task}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_built_in_task_has_golden_files():
    for sub in ("records", "prompts"):
        assert sorted(p.stem for p in (GOLDEN / sub).glob("*.jsonl")) == sorted(TASKS), sub
    size = sum(p.stat().st_size for p in GOLDEN.rglob("*.jsonl"))
    assert 0 < size < 1_000_000  # hashes and the first records only: the repo stays small


@pytest.mark.parametrize("task", sorted(TASKS))
def test_records_match_golden(task):
    golden = _golden("records", task)
    today = MAKE.record_lines(task, _data(task))
    for want in (g for g in golden if g["kind"] == "split"):
        got = next(t for t in today if t["kind"] == "split" and t["split"] == want["split"])
        where = f"{task} {want['split']}"
        assert got["n"] == want["n"], f"{where}: {got['n']} records, golden {want['n']}; {REGENERATE}"
        bad = [i for i, (a, b) in enumerate(zip(got["chunks"], want["chunks"])) if a != b]
        assert not bad, (f"{where}: records {bad[0] * want['chunk']}-{(bad[0] + 1) * want['chunk'] - 1} differ "
                         f"({len(bad)} chunks of {want['chunk']}); {REGENERATE}")
        assert got["sha256"] == want["sha256"], where
    records = {(g["split"], g["index"]): g["record"] for g in golden if g["kind"] == "record"}
    assert records == {(t["split"], t["index"]): t["record"] for t in today if t["kind"] == "record"}
    assert len(golden) == len(today)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_prompts_match_golden(task):
    golden = _golden("prompts", task)
    today = MAKE.prompt_lines(task, _data(task))
    assert [(g["kind"], g.get("id"), g.get("name")) for g in golden] == [
        (t["kind"], t.get("id"), t.get("name")) for t in today]
    for want, got in zip(golden, today):
        assert got == want, f"{task} {want.get('id')} {want.get('name')} renders differently; {REGENERATE}"


def test_golden_prompts_cover_what_they_claim():
    """The golden files hold the prompts a run sends: the arith CoT prompt with arith's own demonstrations,
    a multiplication worded as the gold computes it, and the feedback prompt with and without the hint."""
    from rbyr_ray.tasks.prompts import FEW_SHOT

    lines = {(g["id"], g["name"]): g["value"] for g in _golden("prompts", "arith") if g["kind"] == "prompt"}
    cot = lines[("arith-train-0", "teacher_cot")]
    assert cot[1]["content"] == f"Question: {FEW_SHOT['arith'][0][0]}" and len(cot) == 2 + 2 * len(FEW_SHOT["arith"])
    assert any("ends up with" in v for (_, name), v in lines.items() if name == "student_prefix")
    hinted = lines[("arith-test-0", "teacher_feedback")][-1]["content"]
    plain = lines[("arith-test-0", "teacher_feedback_no_hint")][-1]["content"]
    assert "correct answer is" in hinted and "correct answer is" not in plain
    assert MAKE.WRONG.split("\n")[0] in hinted
    csqa = {(g["id"], g["name"]): g["value"] for g in _golden("prompts", "csqa") if g["kind"] == "prompt"}
    assert "Answer Choices: (a) " in csqa[("csqa-test-0", "student_prefix")]
