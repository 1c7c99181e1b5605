"""The paper's protocol preset (configs/protocol/arith.yaml): round 1 already learns from the untuned student's
own mistakes.

The preset's settings are checked here; its behaviour (the round-0 exam, round 1's triplets on exactly the untuned
student's mistakes, the reflection loss's signal in the run's records, a task file through every stage) is checked
on make test's one real run, the main job (test_main_job.py), which runs with the protocol's round-0 exam: `make
test` pays for one tiny run rather than two.
"""

from __future__ import annotations

from pathlib import Path

from rbyr_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs/protocol/arith.yaml"


def test_the_preset_is_the_papers_protocol():
    cfg = load_config(PRESET)
    assert cfg.exam.round0 and cfg.exam.samples == 4 and cfg.exam.temperature == 1.0 and cfg.exam.top_k == 50
    assert cfg.exam.limit is None  # every exam covers every training question
    assert cfg.train.reflection.weight == 0.5 and cfg.train.reflection.margin == 1.0


def test_the_main_job_runs_the_protocols_round_0_exam_and_reflection_loss():
    """What the main job's run shares with this preset, so that its checks stand for the preset's behaviour."""
    from test_main_job import OVERRIDES

    preset, job = load_config(PRESET), load_config(REPO / "configs/demo.yaml", OVERRIDES)
    assert job.exam.round0 and preset.exam.round0 and job.exam.limit is None and preset.exam.limit is None
    assert job.train.reflection == preset.train.reflection and job.exam.mistakes == preset.exam.mistakes
