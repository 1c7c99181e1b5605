"""Training items and batches (rbyr_ray.train.data) with the real SmolLM2 tokenizer."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from rbyr_ray.config import TrainConfig
from rbyr_ray.student.models import load_tokenizer, resolve_model_dir
from rbyr_ray.tasks import prompts
from rbyr_ray.tasks.records import Record
from rbyr_ray.train.data import build_train_items, collate, question_batches
from rbyr_ray.train.losses import IGNORE

RECORDS = {
    "q1": Record(id="q1", question="Mia has 3 apples. She buys 4 more apples. How many apples does Mia have now?",
                 answer="7"),
    "q2": Record(id="q2", question="Liam has 10 coins. He loses 2 coins. How many coins does Liam have now?",
                 answer="8"),
    "q3": Record(id="q3", question="Ava has 5 cards. How many cards does Ava have now?", answer="5"),
}
TEACHER = pd.DataFrame([
    {"id": "q1", "sample": 0, "rationale": "3 + 4 = 7.\nAnswer: 7", "accepted": True},
    {"id": "q1", "sample": 1, "rationale": "Mia ends with 3 + 4 = 7 apples.", "accepted": True},
    {"id": "q1", "sample": 2, "rationale": "3 + 4 = 8.", "accepted": False},
    {"id": "q2", "sample": 0, "rationale": "10 - 2 = 8.", "accepted": True},
    {"id": "q2", "sample": 1, "rationale": "10 - 2 = 8.", "accepted": True},  # a duplicate: no positive
    {"id": "q3", "sample": 0, "rationale": "She has 5.", "accepted": True},
    {"id": "q3", "sample": 1, "rationale": "Ava still has 5 cards.", "accepted": True},
])
MISTAKES = {"q1": ["3 + 4 = 12.\nAnswer: 12", "3 * 4 = 12. Answer: 12"], "q2": ["10 + 2 = 12."]}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_dir("smollm2-135m"))


@pytest.fixture(scope="module")
def items(tokenizer) -> pd.DataFrame:
    return build_train_items(TEACHER, MISTAKES, RECORDS, tokenizer, TrainConfig(), answer_type="numeric", seed=0)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_one_item_per_accepted_rationale(items):
    assert list(items["id"]) == ["q1", "q1", "q2", "q2", "q3", "q3"]
    assert list(items["sample"]) == [0, 1, 0, 1, 0, 1]


def test_anchor_is_prefix_plus_target_plus_eos(items, tokenizer):
    row = items.iloc[0]
    prefix = prompts.student_prefix(RECORDS["q1"])
    assert row["n_prefix"] == len(ids(tokenizer, prefix))
    assert list(row["input_ids"][:row["n_prefix"]]) == ids(tokenizer, prefix)
    text = tokenizer.decode(row["input_ids"])
    assert text == prefix + prompts.student_target("3 + 4 = 7.", "7") + tokenizer.eos_token
    assert row["input_ids"][-1] == tokenizer.eos_token_id


def test_items_use_the_tasks_student_prefix(tokenizer):
    """A task file's prefix template (TaskData.prompts) is what the student is trained on, as it is examined."""
    from rbyr_ray.tasks.taskfile import TaskPrompts

    task = TaskPrompts("numeric", student="Q: {question}\nA: ")
    got = build_train_items(TEACHER, MISTAKES, RECORDS, tokenizer, TrainConfig(), answer_type="numeric", seed=0,
                            task=task)
    row = got.iloc[0]
    assert list(row["input_ids"][:row["n_prefix"]]) == ids(tokenizer, f"Q: {RECORDS['q1'].question}\nA: ")


def test_positive_and_negative(items, tokenizer):
    first = items.iloc[0]
    assert first["valid"]
    prefix = prompts.student_prefix(RECORDS["q1"])
    pos, neg = tokenizer.decode(first["pos_ids"]), tokenizer.decode(first["neg_ids"])
    assert pos == prefix + "Mia ends with 3 + 4 = 7 apples.\nAnswer: 7" + tokenizer.eos_token  # the other one
    assert neg in {prefix + "3 + 4 = 12.\nAnswer: 12" + tokenizer.eos_token,
                   prefix + "3 * 4 = 12.\nAnswer: 12" + tokenizer.eos_token}
    by_id = items.groupby("id")["valid"].apply(list).to_dict()
    assert by_id["q2"] == [False, False]  # a second, different teacher rationale is missing
    assert by_id["q3"] == [False, False]  # no student mistake
    assert all(len(r) == 0 for r in items[~items["valid"]]["pos_ids"])


def test_rationales_are_cut(tokenizer):
    long = " ".join(f"{i} + 1 = {i + 1}." for i in range(100))
    teacher = pd.DataFrame([{"id": "q1", "sample": s, "rationale": long + "x" * s, "accepted": True} for s in (0, 1)])
    cfg = TrainConfig(reflection={"max_rationale_tokens": 16})
    items = build_train_items(teacher, {"q1": [long]}, RECORDS, tokenizer, cfg, answer_type="numeric", seed=0)
    row = items.iloc[0]
    tail = ids(tokenizer, "\nAnswer: 7") + [tokenizer.eos_token_id]
    assert row["n_rationale"] == 16 and len(row["input_ids"]) == row["n_prefix"] + 16 + len(tail)
    assert row["pos_n_rationale"] == 16 and row["neg_n_rationale"] == 16


def test_rounds_and_replay(tokenizer):
    teacher = pd.concat([TEACHER.assign(round=1), TEACHER.assign(round=2).iloc[:2]])
    latest = build_train_items(teacher, MISTAKES, RECORDS, tokenizer, TrainConfig(), answer_type="numeric", seed=0)
    assert list(latest["round"]) == [2, 2]
    replay = build_train_items(teacher, MISTAKES, RECORDS, tokenizer, TrainConfig(replay=3),
                               answer_type="numeric", seed=0)
    assert sorted(replay["round"]) == [1, 1, 1, 2, 2]
    every = build_train_items(teacher, MISTAKES, RECORDS, tokenizer, TrainConfig(all_rounds_data=True),
                              answer_type="numeric", seed=0)
    assert len(every) == 8


def test_parquet_round_trip(items, tmp_path):
    items.to_parquet(tmp_path / "train_data.parquet")
    back = pd.read_parquet(tmp_path / "train_data.parquet")
    assert [list(x) for x in back["input_ids"]] == [list(x) for x in items["input_ids"]]
    assert list(back["valid"]) == list(items["valid"])


@pytest.mark.parametrize("seed", range(20))
def test_batches_never_repeat_a_question(seed):
    rng = random.Random(seed)
    qids = [f"q{rng.randrange(12)}" for _ in range(rng.randrange(1, 60))]
    size = rng.randrange(1, 9)
    batches = question_batches(qids, size, seed)
    assert sorted(i for b in batches for i in b) == list(range(len(qids)))
    for batch in batches:
        assert 1 <= len(batch) <= size
        assert len({qids[i] for i in batch}) == len(batch)


@pytest.mark.parametrize("seed", range(10))
def test_length_grouped_batches_pad_less_and_still_never_repeat_a_question(seed):
    rng = random.Random(seed)
    qids = [f"q{i // 2}" for i in range(160)]  # two items per question, as with k = 2 teacher samples
    lengths = [rng.randrange(40, 120) for _ in qids]

    def padding(batches):  # padded tokens a batch pays beyond its items' own lengths
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    grouped, plain = question_batches(qids, 8, seed, lengths), question_batches(qids, 8, seed)
    assert sorted(i for b in grouped for i in b) == list(range(len(qids)))
    assert all(len({qids[i] for i in b}) == len(b) for b in grouped)
    assert padding(grouped) < 0.25 * padding(plain)
    firsts = [min(lengths[i] for i in b) for b in grouped]
    assert firsts != sorted(firsts)  # the batches still come in random order


def test_collate_builds_labels_weights_and_masks(items, tokenizer):
    rows = items.to_dict("records")
    batch = collate([rows[0], rows[2]], tokenizer.pad_token_id, w_prefix=0.1)
    n0, n2 = len(rows[0]["input_ids"]), len(rows[2]["input_ids"])
    width = max(n0, n2)
    assert batch["input_ids"].shape == (2, width)
    short, n_short = (0, n0) if n0 < n2 else (1, n2)
    assert (batch["labels"][short, n_short:] == IGNORE).all()
    assert (batch["labels"][short, :n_short] != IGNORE).all()  # the eos label survives although pad == eos
    w = batch["weights"][0]
    p = rows[0]["n_prefix"]
    assert torch.allclose(w[:p], torch.tensor(0.1)) and (w[p:n0] == 1).all() and (w[n0:] == 0).all()
    assert batch["pos_input_ids"].shape == batch["neg_input_ids"].shape
    assert batch["valid"].tolist() == [True, False]
    assert batch["pos_attention_mask"][1].sum() == rows[2]["n_prefix"]  # the stand-in: the bare prefix
    r = batch["rationale_mask"][0]
    assert r.sum() == rows[0]["n_rationale"] and r[p] == 1 and r[p - 1] == 0


def test_negative_only_items_keep_their_negative_for_ranking(items, tokenizer):
    """q2 has a student mistake but one distinct teacher rationale: no triplet, but a ranking pair."""
    prefix = prompts.student_prefix(RECORDS["q2"])
    for _, row in items[items["id"] == "q2"].iterrows():
        assert not row["valid"] and row["has_negative"] and len(row["pos_ids"]) == 0
        assert tokenizer.decode(row["neg_ids"]) == prefix + "10 + 2 = 12.\nAnswer: 12" + tokenizer.eos_token
    assert not items[items["id"] == "q3"]["has_negative"].any()  # no mistake: nothing to rank against
    assert all(len(r) == 0 for r in items[~items["has_negative"]]["neg_ids"])
    rows = items.to_dict("records")
    triplet = collate([rows[0], rows[2], rows[4]], tokenizer.pad_token_id, 0.1)
    assert triplet["valid"].tolist() == [True, False, False]
    assert triplet["neg_attention_mask"][1].sum() == rows[2]["n_prefix"]  # the triplet ignores it: a stand-in
    ranking = collate([rows[0], rows[2], rows[4]], tokenizer.pad_token_id, 0.1, kind="ranking")
    assert ranking["valid"].tolist() == [True, True, False] and "pos_input_ids" not in ranking
    assert ranking["neg_attention_mask"][1].sum() == len(rows[2]["neg_ids"])
    # target tokens: everything after the prefix (rationale, answer line, eos); none for the stand-in
    for i, row in enumerate([rows[0], rows[2]]):
        assert ranking["target_mask"][i].sum() == len(row["input_ids"]) - row["n_prefix"]
        assert ranking["neg_target_mask"][i].sum() == len(row["neg_ids"]) - row["n_prefix"]
    assert ranking["neg_target_mask"][2].sum() == 0


def test_negative_only_items_leave_the_triplets_draws_unchanged(tokenizer):
    """Adding a question with a mistake but no positive must not change which positive/negative the others get."""
    mistakes = {"q1": ["3 + 4 = 12.", "3 * 4 = 12."], "q3": ["5 + 5 = 10.", "5 * 2 = 10.", "5 - 1 = 4.", "6 - 1 = 5."]}
    both = build_train_items(TEACHER, mistakes, RECORDS, tokenizer, TrainConfig(), answer_type="numeric", seed=3)
    more = build_train_items(TEACHER, {**mistakes, "q2": ["10 + 2 = 12."]}, RECORDS, tokenizer, TrainConfig(),
                             answer_type="numeric", seed=3)
    keep = both["id"] != "q2"
    for column in ("pos_ids", "neg_ids", "valid"):
        assert [list(x) if hasattr(x, "__len__") else x for x in both[keep][column]] == \
               [list(x) if hasattr(x, "__len__") else x for x in more[keep][column]], column
    assert more[more["id"] == "q2"]["has_negative"].all() and not both[both["id"] == "q2"]["has_negative"].any()


def test_targets_over_the_students_budget_are_counted(items, tokenizer):
    from rbyr_ray.loop.rounds import targets_over_budget

    # What the student writes for each item: rationale + "\nAnswer: X" (the eos may fall past the budget).
    lengths = [len(ids(tokenizer, prompts.fold_rationale(prompts.strip_answer_line(r)) + f"\nAnswer: {a}"))
               for r, a in [("3 + 4 = 7.", "7"), ("Mia ends with 3 + 4 = 7 apples.", "7"), ("10 - 2 = 8.", "8"),
                            ("10 - 2 = 8.", "8"), ("She has 5.", "5"), ("Ava still has 5 cards.", "5")]]
    longest = max(lengths)
    assert targets_over_budget(items, longest) == (0, int(pd.Series(lengths).median()))
    assert targets_over_budget(items, longest - 1)[0] == lengths.count(longest)
    assert targets_over_budget(items, 1)[0] == len(items)
    assert targets_over_budget(items.iloc[:0], 40) == (0, 0)
