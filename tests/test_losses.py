"""The math of L = L_lm + lambda * L_ref against straightforward reference loops (METHOD.md "L_lm", "L_ref").

A tiny random Llama in float64, so every comparison is tight.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rbyr_ray.train.data import collate
from rbyr_ray.train.losses import reflection_loss, weighted_lm_loss
from rbyr_ray.train.objective import ReflectionObjective

PAD = 0
W_PREFIX = 0.25  # exact in float32, the dtype of collated weights


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    config._attn_implementation = "sdpa"  # eager attention takes its softmax in float32
    return LlamaForCausalLM(config).double().eval()


def item(prefix, rationale, tail, pos=None, neg=None) -> dict:
    """A data.py row: anchor = prefix + rationale + tail; pos/neg = prefix + their rationale + tail."""
    valid = pos is not None and neg is not None
    return {"input_ids": prefix + rationale + tail, "n_prefix": len(prefix), "n_rationale": len(rationale),
            "pos_ids": prefix + pos + tail if valid else [], "pos_n_rationale": len(pos) if valid else 0,
            "neg_ids": prefix + neg + tail if valid else [], "neg_n_rationale": len(neg) if valid else 0,
            "valid": valid}


def items() -> list[dict]:
    # Token ranges are disjoint: 1-9 prefixes, 10-19 anchors, 20-29 positives, 30-39 negatives, 40-49 tails.
    return [
        item([1, 2, 3], [10, 11, 12, 13], [40, 41], pos=[20, 21], neg=[30, 31, 32, 33, 34, 35]),
        item([4, 5], [14, 15], [42], pos=[22, 23, 24, 25, 26], neg=[36]),
        item([6, 7, 8, 9], [16, 17, 18], [43, 44]),  # no positive/negative: invalid
    ]


def reference_lm(model, rows) -> float:
    """sum over target positions of w * CE / number of non-pad predicted positions, one unpadded row at a time."""
    total, count = 0.0, 0
    for row in rows:
        ids = row["input_ids"]
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
        for t in range(1, len(ids)):
            w = W_PREFIX if t < row["n_prefix"] else 1.0
            total += -w * logp[t - 1, ids[t]].item()
            count += 1
    return total / count


def last_hidden(model, ids) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]


def cos(a, b) -> float:
    return float((a @ b / (a.norm() * b.norm())).detach())


def reference_ref(model, rows, margin) -> float:
    losses = []
    for row in rows:
        if row["valid"]:
            a, p, n = (last_hidden(model, row[k]) for k in ("input_ids", "pos_ids", "neg_ids"))
            losses.append(max(0.0, margin - cos(a, p) + cos(a, n)))
    return sum(losses) / len(losses)


def test_weighted_lm_loss_matches_reference(model):
    batch = collate(items(), PAD, W_PREFIX)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = weighted_lm_loss(logits, batch["labels"], batch["weights"]).item()
    assert got == pytest.approx(reference_lm(model, items()), rel=1e-10)


def test_weighted_lm_loss_prefix_weight_zero_is_target_only():
    logits = torch.randn(1, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[1, 2, 3, 4, 5]])
    weights = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    logp = torch.log_softmax(logits[0], -1)
    expected = -(logp[1, 3] + logp[2, 4] + logp[3, 5]) / 4  # 3 target tokens over 4 non-pad predictions
    assert weighted_lm_loss(logits, labels, weights).item() == pytest.approx(expected.item(), rel=1e-12)


def test_reflection_loss_matches_reference():
    torch.manual_seed(1)
    a, p, n = (torch.randn(5, 8, dtype=torch.float64) for _ in range(3))
    valid = torch.tensor([True, False, True, True, False])
    margin = 0.3
    expected = [max(0.0, margin - cos(a[i], p[i]) + cos(a[i], n[i])) for i in range(5) if valid[i]]
    got = reflection_loss(a, p, n, valid, margin).item()
    assert got == pytest.approx(sum(expected) / len(expected), rel=1e-12)
    assert reflection_loss(a, p, n, torch.zeros(5, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("margin", [1.0, 0.2])
def test_objective_matches_reference(model, margin):
    rows = items()
    out = ReflectionObjective(model, weight=0.5, margin=margin, pooling="last")(collate(rows, PAD, W_PREFIX))
    lm, ref = reference_lm(model, rows), reference_ref(model, rows, margin)
    assert out["lm_loss"].item() == pytest.approx(lm, rel=1e-10)
    assert out["ref_loss"].item() == pytest.approx(ref, rel=1e-10)
    assert out["loss"].item() == pytest.approx(lm + 0.5 * ref, rel=1e-10)


def test_mean_pooling_averages_rationale_tokens(model):
    rows = items()[:1]
    out = ReflectionObjective(model, weight=1.0, margin=1.0, pooling="mean")(collate(rows, PAD, W_PREFIX))
    row = rows[0]

    def mean_rationale(ids, n_rationale):
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        return hidden[row["n_prefix"]:row["n_prefix"] + n_rationale].mean(0)

    a = mean_rationale(row["input_ids"], row["n_rationale"])
    p = mean_rationale(row["pos_ids"], row["pos_n_rationale"])
    n = mean_rationale(row["neg_ids"], row["neg_n_rationale"])
    assert out["ref_loss"].item() == pytest.approx(max(0.0, 1.0 - cos(a, p) + cos(a, n)), rel=1e-10)


def test_lambda_zero_is_exactly_the_lm_loss(model):
    batch = collate(items(), PAD, W_PREFIX)
    out = ReflectionObjective(model, weight=0.0)(batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(out["loss"], weighted_lm_loss(logits, batch["labels"], batch["weights"]))


def grads(model, batch, weight=0.5, margin=1.0) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    out = ReflectionObjective(model, weight=weight, margin=margin)(batch)
    out["loss"].backward()
    return out["loss"].detach().clone(), model.model.embed_tokens.weight.grad.clone()


def test_invalid_items_change_nothing(model):
    rows = items()
    batch = collate(rows, PAD, W_PREFIX)
    # Replace the invalid item's stand-in positive/negative by other tokens: loss and gradients stay the same.
    changed = {k: v.clone() for k, v in batch.items()}
    changed["pos_input_ids"][2, :4] = torch.tensor([50, 51, 52, 53])
    changed["neg_input_ids"][2, :4] = torch.tensor([54, 55, 56, 57])
    loss_a, grad_a = grads(model, batch)
    loss_b, grad_b = grads(model, changed)
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)
    # And L_ref is the mean over the valid items only.
    only_valid = ReflectionObjective(model, weight=0.5)(collate(rows[:2], PAD, W_PREFIX))["ref_loss"]
    assert ReflectionObjective(model, weight=0.5)(batch)["ref_loss"].item() == pytest.approx(only_valid.item(), rel=1e-12)


def test_gradients_reach_the_model_through_anchor_positive_and_negative(model):
    # lambda large and margin 2 (hinge always active); the tokens of each sequence are its own, so the gradient
    # of L_ref on their embedding rows can only have come through that sequence's forward.
    batch = collate(items(), PAD, W_PREFIX)
    embeddings = model.model.embed_tokens.weight
    total = torch.autograd.grad(ReflectionObjective(model, weight=1.0, margin=2.0)(batch)["loss"], embeddings)[0]
    lm_only = torch.autograd.grad(ReflectionObjective(model, weight=0.0)(batch)["loss"], embeddings)[0]
    ref_grad = total - lm_only
    row_norm = ref_grad.norm(dim=1)
    for name, tokens in {"anchor": range(10, 16), "positive": range(20, 27), "negative": range(30, 37)}.items():
        assert all(row_norm[t] > 0 for t in tokens), name
    assert all(row_norm[t] == 0 for t in range(16, 20)), "the invalid item's anchor has no L_ref gradient"
    assert not math.isnan(row_norm.sum().item())
