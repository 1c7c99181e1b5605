"""Bounded training memory, the parts without a model (docs/memory.md): the token-budget split, the one-line
message when Ray kills a training worker for memory, and resuming a run dir with lowered memory settings."""

from __future__ import annotations

import json

import pytest

from rbyr_ray.config import ConfigError, ExperimentConfig, TrainConfig
from rbyr_ray.loop.rounds import resume_config
from rbyr_ray.loop.rundir import RunDir
from rbyr_ray.train.trainer import memory_failure, micro_batches, padded_tokens


def row(n_anchor: int, n_pos: int, n_neg: int, n_prefix: int = 4) -> dict:
    return {"input_ids": [1] * n_anchor, "pos_ids": [2] * n_pos, "neg_ids": [3] * n_neg, "n_prefix": n_prefix,
            "valid": bool(n_pos and n_neg)}


def test_micro_batches_hold_at_most_the_budget_and_every_item_once():
    items = [row(300, 310, 320), row(100, 90, 95), row(120, 0, 0), row(250, 240, 260), row(60, 70, 65)]
    groups = micro_batches(items, [0, 1, 2, 3, 4], 1200, "triplet", True)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3, 4]
    assert all(padded_tokens([items[i] for i in g], "triplet", True) <= 1200 for g in groups if len(g) > 1)
    assert groups == [[2, 4, 1], [3], [0]]  # shortest first: 3 x 120 + 6 x 95 = 930 (the invalid item pads to 4)
    assert padded_tokens([items[0]], "triplet", True) == 300 + 2 * 320  # alone over the budget: still trained
    assert padded_tokens([items[2]], "triplet", True) == 120  # no triplet: no positives' and negatives' forward
    assert padded_tokens([items[0]], "ranking", True) == 300 + 320 and padded_tokens([items[0]], "triplet", False) == 300
    assert micro_batches(items, [0, 1], None, "triplet", True) == [[0, 1]]


# What Ray 2.60's raylet writes when its memory monitor kills a worker (the format of its OOM message).
RAY_OOM = ("1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.5, ID: ab12) "
           "was 22.85GB used / 24.00GB limit (0.952083) (job ID=01000000, lease ID=ff, task name=RayTrainWorker, "
           "pid=4242, actual memory used=19.70GB, worker ID=cd34)")


def test_a_worker_killed_for_memory_is_one_line_with_the_peak_and_what_to_lower(tmp_path):
    from ray.exceptions import OutOfMemoryError
    from ray.train import WorkerGroupError

    out = tmp_path / "round_2"
    (out / "memory").mkdir(parents=True)
    (out / "memory" / "rank0.json").write_text(json.dumps({"step": 5, "steps": 7, "peak_rss_gb": 18.4,
                                                           "padded_tokens": 7656}))
    error = WorkerGroupError("worker 0 died", {0: OutOfMemoryError(RAY_OOM)})
    line = memory_failure(error, out, TrainConfig(max_tokens_per_micro_batch=2048))  # the message names the setting in force
    assert "\n" not in line
    assert line.startswith("training (round_2) was killed for lack of memory")
    assert "a worker held 19.70 GB" in line and "peak after step 5/7 was 18.4 GB" in line
    assert "7656 tokens in its largest micro-batch" in line and "the node used 22.85 of 24.00 GB" in line
    assert "train.max_tokens_per_micro_batch (now 2048)" in line
    assert "rbyr-ray resume RUN_DIR train.max_tokens_per_micro_batch=1024" in line
    assert "train.gradient_checkpointing=true" in line
    # Any other failure is not about memory: the caller re-raises it as it was.
    assert memory_failure(WorkerGroupError("boom", {0: ValueError("bad item")}), out, TrainConfig()) is None
    assert memory_failure(RuntimeError("x"), out, TrainConfig()) is None


def test_resume_may_lower_memory_settings_but_no_other_key(tmp_path):
    cfg = ExperimentConfig()
    RunDir.create_or_resume(tmp_path, cfg)
    lowered = resume_config(tmp_path, ["train.max_tokens_per_micro_batch=512", "train.gradient_checkpointing=true"])
    assert lowered.train.max_tokens_per_micro_batch == 512 and lowered.train.gradient_checkpointing
    assert lowered.model_copy(update={"train": cfg.train}) == cfg  # nothing else changed
    RunDir.create_or_resume(tmp_path, lowered)  # accepted, and recorded for later resumes
    assert resume_config(tmp_path).train.max_tokens_per_micro_batch == 512
    with pytest.raises(ConfigError, match=r"train\.lr=0\.1: resume changes memory settings only"):
        resume_config(tmp_path, ["train.lr=0.1"])
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.0005 → 0\.1"):  # `run --run-dir` with another key
        RunDir.create_or_resume(tmp_path, lowered.model_copy(update={"train": lowered.train.model_copy(update={"lr": 0.1})}))
    with pytest.raises(ConfigError, match="max_tokens_per_micro_batch"):  # still validated
        resume_config(tmp_path, ["train.max_tokens_per_micro_batch=0"])
