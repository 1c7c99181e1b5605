"""Training items (METHOD.md "Student sequence format", "L_lm", "L_ref") and the batches they are cut into.

One item per accepted teacher rationale t of a question q. All three sequences of an item share prefix(q):

    anchor   = prefix(q) + rationale(t)  + "\\nAnswer: {gold}" + eos        -> L_lm and the anchor of L_ref
    positive = prefix(q) + rationale(t') + "\\nAnswer: {gold}" + eos        t' another accepted teacher rationale
    negative = prefix(q) + rationale(m)  + "\\nAnswer: {pred}" + eos        m one of the student's wrong rationales

rationale(x) is x without its own answer line, folded to one line and cut to `max_rationale_tokens` tokens;
{pred} is the (wrong) answer the student's text gives, so the negative is the student's answer as written.
`valid` marks items with both (the triplet's); `has_negative` items with a negative (all that `ranking` needs),
so the rows are the same whichever loss trains on them.
The pieces are tokenized separately and concatenated, so prefix and rationale lengths are exact and the
prefix tokens are exactly those the exam feeds the student. A row stores token ids and lengths; `collate`
builds labels, weights and masks from the lengths (pad == eos for SmolLM2, so pad ids say nothing).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ..config import TrainConfig
from ..tasks import prompts
from ..tasks.grading import extract_answer
from ..tasks.records import Record
from ..tasks.taskfile import TaskPrompts, task_prompts
from .losses import IGNORE

COLUMNS = ["id", "sample", "round", "input_ids", "n_prefix", "n_rationale",
           "pos_ids", "pos_n_rationale", "neg_ids", "neg_n_rationale", "valid", "has_negative"]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _rationale_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    """The reasoning of a rationale (no answer line), on one line, cut to max_tokens tokens."""
    return _ids(tokenizer, prompts.fold_rationale(prompts.strip_answer_line(text)))[:max_tokens]


def _answer_ids(tokenizer, answer: str | None) -> list[int]:
    """'\\nAnswer: X' + eos; just eos when the text gives no answer."""
    line = f"\n{prompts.ANSWER_PREFIX}{answer}" if answer else ""
    return _ids(tokenizer, line) + [tokenizer.eos_token_id]


def _distinct(texts: Sequence[str], limit: int) -> list[str]:
    """The first `limit` distinct texts (compared folded), in order."""
    seen: dict[str, str] = {}
    for text in texts:
        key = prompts.fold_rationale(prompts.strip_answer_line(str(text)))
        if key and key not in seen:
            seen[key] = str(text)
    return list(seen.values())[:limit]


def select_rows(teacher_rows: pd.DataFrame, cfg: TrainConfig, seed: int) -> pd.DataFrame:
    """The accepted rows to train on: the latest round's (all rounds' with `all_rounds_data`), plus `replay`
    earlier-round rows drawn at random."""
    rows = teacher_rows[teacher_rows["accepted"].astype(bool)]
    if "round" not in rows.columns or cfg.all_rounds_data or rows.empty:
        return rows
    latest = rows["round"].max()
    current, earlier = rows[rows["round"] == latest], rows[rows["round"] != latest]
    replay = earlier.sample(n=min(cfg.replay, len(earlier)), random_state=seed) if cfg.replay else earlier.iloc[:0]
    return pd.concat([current, replay])


def build_train_items(teacher_rows: pd.DataFrame, mistakes: Mapping[str, Sequence[str]],
                      records: Mapping[str, Record], tokenizer, cfg: TrainConfig, *, answer_type: str, seed: int,
                      demos: list[tuple[Record, str]] | None = None, task: TaskPrompts | None = None
                      ) -> pd.DataFrame:
    """One row per accepted teacher rationale (columns `COLUMNS`), saved by the caller as train_data.parquet.

    Positives come from every accepted rationale in `teacher_rows` for the question (the first
    `max_positives` distinct ones, the anchor's own text excluded); negatives from the first `max_negatives`
    distinct entries of `mistakes[id]`. An item without a positive has empty pos ids and valid=False; without
    a negative also empty neg ids and has_negative=False.
    `demos` are the few-shot demonstrations of the student prefix (none by default); `task` the task's
    prompts (TaskData.prompts), whose student prefix the items are trained on, as the exam asks with it.
    """
    rcfg = cfg.reflection
    student = task_prompts(task, answer_type)
    rng = random.Random(seed)
    rng_neg = random.Random(seed + 1)  # negative-only items: their draws leave the triplets' as they always were
    accepted = teacher_rows[teacher_rows["accepted"].astype(bool)]
    pool = {qid: _distinct(group["rationale"].tolist(), rcfg.max_positives)
            for qid, group in accepted.groupby(accepted["id"].astype(str))}
    rows = []
    for row in select_rows(teacher_rows, cfg, seed).itertuples(index=False):
        qid = str(row.id)
        record = records[qid]
        prefix = _ids(tokenizer, student.student_prefix(record, demos))
        rationale = _rationale_ids(tokenizer, str(row.rationale), rcfg.max_rationale_tokens)
        own = prompts.fold_rationale(prompts.strip_answer_line(str(row.rationale)))
        positives = [t for t in pool.get(qid, []) if prompts.fold_rationale(prompts.strip_answer_line(t)) != own]
        negatives = _distinct(mistakes.get(qid, ()), rcfg.max_negatives)
        pos_rat: list[int] = []
        neg_rat: list[int] = []
        predicted = None
        if negatives:
            if positives:
                pos_rat = _rationale_ids(tokenizer, rng.choice(positives), rcfg.max_rationale_tokens)
            wrong = rng.choice(negatives) if positives else rng_neg.choice(negatives)
            neg_rat = _rationale_ids(tokenizer, wrong, rcfg.max_rationale_tokens)
            predicted = extract_answer(answer_type, wrong, record.choices)  # type: ignore[arg-type]
        valid = bool(pos_rat) and bool(neg_rat)
        rows.append({
            "id": qid,
            "sample": int(getattr(row, "sample", 0)),
            "round": int(getattr(row, "round", 0)),
            "input_ids": prefix + rationale + _answer_ids(tokenizer, record.answer),
            "n_prefix": len(prefix),
            "n_rationale": len(rationale),
            "pos_ids": prefix + pos_rat + _answer_ids(tokenizer, record.answer) if valid else [],
            "pos_n_rationale": len(pos_rat) if valid else 0,
            "neg_ids": prefix + neg_rat + _answer_ids(tokenizer, predicted) if neg_rat else [],
            "neg_n_rationale": len(neg_rat),
            "valid": valid,
            "has_negative": bool(neg_rat),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def question_batches(ids: Sequence[str], batch_size: int, seed: int,
                     lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Shuffled batches of item indices in which no question id occurs twice (METHOD.md, L_ref).

    Each item goes to the first batch that has room and lacks its question; batches are then shuffled.
    Every batch is full except where a question has more items than there are other questions to mix in.
    With `lengths`, items are taken shortest first (ties in random order), so a batch holds similar lengths
    and pads little; the batches themselves still come in random order.
    """
    rng = random.Random(seed)
    order = list(range(len(ids)))
    rng.shuffle(order)
    if lengths is not None:
        order.sort(key=lambda i: lengths[i])  # stable: the shuffle breaks ties
    batches: list[list[int]] = []
    members: list[set[str]] = []
    for index in order:
        for batch, seen in zip(batches, members):
            if len(batch) < batch_size and ids[index] not in seen:
                batch.append(index)
                seen.add(ids[index])
                break
        else:
            batches.append([index])
            members.append({ids[index]})
    rng.shuffle(batches)
    return batches


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B,length] and the attention mask built from the lengths."""
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, :len(seq)] = 1
    return ids, mask


def _span_mask(starts: Sequence[int], lengths: Sequence[int], width: int) -> torch.Tensor:
    positions = torch.arange(width)
    start, length = torch.tensor(list(starts)).unsqueeze(1), torch.tensor(list(lengths)).unsqueeze(1)
    return ((positions >= start) & (positions < start + length)).long()


def collate(items: Sequence[Mapping], pad_id: int, w_prefix: float, kind: str = "triplet") -> dict[str, torch.Tensor]:
    """A batch for ReflectionObjective from item rows (dicts with the `COLUMNS` keys).

    Anchor: labels = ids with pads -100; weights w_prefix on prefix tokens, 1 on target tokens, 0 on pads;
    target_mask 1 on target tokens (rationale, answer line, eos). triplet: positives and negatives are padded
    to one common length, because they share one forward; valid = the item has both. ranking: only the
    negatives (with their target_mask), valid = the item has one, plus the reference log-likelihoods when the
    rows carry them (`ref_chosen_logp`, `ref_rejected_logp`). An item without a sequence gets its bare prefix
    as a stand-in (real tokens, so no fully masked row can make NaNs); valid=False keeps it out of L_ref.
    """
    anchors = [list(item["input_ids"]) for item in items]
    n_prefix = [int(item["n_prefix"]) for item in items]
    input_ids, attention_mask = _pad(anchors, pad_id, max(map(len, anchors)))
    width = input_ids.size(1)
    lengths = attention_mask.sum(1, keepdim=True)
    positions = torch.arange(width).unsqueeze(0)
    weights = torch.where(positions < torch.tensor(n_prefix).unsqueeze(1), w_prefix, 1.0)
    weights = weights * attention_mask
    labels = torch.where(positions < lengths, input_ids, torch.full_like(input_ids, IGNORE))
    ranking = kind != "triplet"  # ranking, hinge, redi, dpop: the anchor and a negative (see objective.PAIR_KINDS)
    valid = torch.tensor([len(item["neg_ids"]) > 0 if ranking else bool(item["valid"]) for item in items])
    batch = {
        "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
        "weights": weights.to(torch.float32), "valid": valid,
        "rationale_mask": _span_mask(n_prefix, [int(item["n_rationale"]) for item in items], width),
        "target_mask": _span_mask(n_prefix, [len(a) - p for a, p in zip(anchors, n_prefix)], width),
    }
    neg = [list(item["neg_ids"]) if ok else a[:p] for item, ok, a, p in zip(items, valid, anchors, n_prefix)]
    neg_n = [int(item["neg_n_rationale"]) if ok else 0 for item, ok in zip(items, valid)]
    if ranking:
        neg_ids, neg_mask = _pad(neg, pad_id, max(map(len, neg)))
        batch |= {"neg_input_ids": neg_ids, "neg_attention_mask": neg_mask,
                  "neg_target_mask": _span_mask(n_prefix, [len(x) - p for x, p in zip(neg, n_prefix)], neg_ids.size(1))}
        if "ref_chosen_logp" in items[0]:
            for key in ("ref_chosen_logp", "ref_rejected_logp"):
                batch[key] = torch.tensor([float(item[key]) for item in items], dtype=torch.float64)
        return batch
    pos = [list(item["pos_ids"]) if ok else a[:p] for item, ok, a, p in zip(items, valid, anchors, n_prefix)]
    pn_width = max(map(len, pos + neg))
    pos_ids, pos_mask = _pad(pos, pad_id, pn_width)
    neg_ids, neg_mask = _pad(neg, pad_id, pn_width)
    pos_n = [int(item["pos_n_rationale"]) if ok else 0 for item, ok in zip(items, valid)]
    return batch | {
        "pos_input_ids": pos_ids, "pos_attention_mask": pos_mask, "pos_rationale_mask": _span_mask(n_prefix, pos_n, pn_width),
        "neg_input_ids": neg_ids, "neg_attention_mask": neg_mask, "neg_rationale_mask": _span_mask(n_prefix, neg_n, pn_width),
    }
