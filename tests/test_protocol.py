"""The paper's protocol preset (configs/protocol/arith.yaml): round 1 already learns from the untuned student's
own mistakes, and the reflection loss's learning signal reaches the run's records.

One real round, tiny: the SmolLM2 student's round-0 exam (4 samples per question at temperature 1.0), the local
solver teacher over HTTP, training on a local Ray, greedy evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import rbyr_ray
from rbyr_ray.config import load_config
from rbyr_ray.loop.summary import format_round_table
from rbyr_ray.student.models import load_tokenizer
from rbyr_ray.tasks import prompts

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs/protocol/arith.yaml"
TINY = ["rounds=1", "task.arith.n_train=6", "task.arith.n_test=4", "task.arith.max_steps=1",
        "exam.max_new_tokens=24", "eval.max_new_tokens=24", "train.batch_size=4", "train.lora.r=4",
        "train.lora.alpha=8", "train.warmup_steps=1", "tracking.wandb=false"]


def fold(text: str) -> str:
    return prompts.fold_rationale(prompts.strip_answer_line(str(text)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ray_cluster) -> Path:
    path = tmp_path_factory.mktemp("protocol") / "run"
    rbyr_ray.run(load_config(PRESET, TINY), run_dir=path)
    return path


def test_the_preset_is_the_papers_protocol():
    cfg = load_config(PRESET)
    assert cfg.exam.round0 and cfg.exam.samples == 4 and cfg.exam.temperature == 1.0 and cfg.exam.top_k == 50
    assert cfg.exam.limit is None  # every exam covers every training question
    assert cfg.train.reflection.weight == 0.5 and cfg.train.reflection.margin == 1.0


def test_round_1_has_triplets_exactly_for_the_untuned_students_mistakes(run_dir: Path):
    exam = pd.read_parquet(run_dir / "round_0/exam.parquet")
    assert exam["id"].nunique() == 6 and (exam.groupby("id").size() == 4).all()
    wrong = exam[~exam["correct"].astype(bool) & exam["error"].isna() & (exam["rationale"].str.strip() != "")]
    mistakes = {q: set(map(fold, g["rationale"])) for q, g in wrong.groupby("id")}
    teacher = pd.read_parquet(run_dir / "round_1/teacher.parquet")
    accepted = teacher[teacher["accepted"].astype(bool)]
    two_rationales = {q for q, g in accepted.groupby("id") if g["rationale"].map(fold).nunique() >= 2}
    items = pd.read_parquet(run_dir / "round_1/train_data.parquet")
    valid = items[items["valid"].astype(bool)]
    assert mistakes, "the untuned student made no mistake: nothing to test"
    assert set(valid["id"]) == set(mistakes) & two_rationales
    assert set(items[items["has_negative"].astype(bool)]["id"]) == set(mistakes)
    # Each negative is one of that question's own wrong rationales (as the student wrote it, folded).
    tokenizer = load_tokenizer(str(run_dir / "round_1/model"))
    for row in valid.itertuples():
        p = row.n_prefix
        assert tokenizer.decode(list(row.neg_ids[p:p + row.neg_n_rationale])) in mistakes[row.id]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["round_1/train_data"]["metrics"]["items_with_triplet"] == len(valid)


def test_the_learning_signal_reaches_metrics_summary_and_table(run_dir: Path):
    train = json.loads((run_dir / "manifest.json").read_text())["stages"]["round_1/train"]["metrics"]
    assert train["reflection_kind"] == "triplet" and train["reflection_items"] > 0
    assert -2.0 <= train["reflection_gap"] <= 2.0 and 0.0 <= train["reflection_active"] <= 1.0
    assert train["reflection_gap"] == pytest.approx(train["reflection_cos_ap"] - train["reflection_cos_an"], abs=1e-9)
    # margin 1.0: each item's hinge max(0, 1 - Δ_i) >= 1 - Δ_i, so over the same items the mean hinge (L_ref) is
    # >= 1 - mean Δ whatever the hinges do, with equality exactly when every hinge is active (Δ_i < 1 for all i).
    assert train["reflection_loss"] >= max(0.0, 1.0 - train["reflection_gap"]) - 1e-6, train
    if train["reflection_active"] == 1.0:
        assert train["reflection_loss"] == pytest.approx(1.0 - train["reflection_gap"], abs=1e-6)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(line for line in lines if line.get("stage") == "train")
    assert json.dumps(logged).count("reflection_gap") == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    round1 = next(r for r in summary["rounds"] if r["round"] == 1)
    assert round1["reflection_gap"] == train["reflection_gap"]
    assert round1["reflection_active"] == train["reflection_active"]
    table = format_round_table(summary)
    assert "ref_gap" in table.splitlines()[0] and f"{train['reflection_gap']:.3f}" in table
    assert (run_dir / "report.png").stat().st_size > 10_000
