"""The math of L = L_lm + lambda * L_ref against straightforward reference loops (METHOD.md "L_lm", "L_ref",
"L_ref variant: ranking"), and the learning signals logged beside it.

A tiny random Llama in float64, so every comparison is tight.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rbyr_ray.train.data import collate
from rbyr_ray.train.losses import (
    DPOP_PENALTY,
    dpop_loss,
    likelihood_hinge_loss,
    preference_loss,
    redi_loss,
    reflection_loss,
    sequence_logp,
    weighted_lm_loss,
)
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


# ------------------------------------------------------------------ the learning signal and the ranking variant


def reference_signals(model, rows, margin) -> dict:
    """Means over valid items of cos(a,p), cos(a,n), their gap and the active hinges, one row at a time."""
    ap, an = [], []
    for row in rows:
        if row["valid"]:
            a, p, n = (last_hidden(model, row[k]) for k in ("input_ids", "pos_ids", "neg_ids"))
            ap.append(cos(a, p))
            an.append(cos(a, n))
    gaps = [x - y for x, y in zip(ap, an)]
    return {"reflection_cos_ap": sum(ap) / len(ap), "reflection_cos_an": sum(an) / len(an),
            "reflection_gap": sum(gaps) / len(gaps), "reflection_active": sum(g < margin for g in gaps) / len(gaps)}


@pytest.mark.parametrize("margin", [1.0, 0.0])
def test_triplet_signals_match_reference(model, margin):
    rows = items()
    out = ReflectionObjective(model, weight=0.5, margin=margin)(collate(rows, PAD, W_PREFIX))
    assert out["n_valid"].item() == 2
    for key, value in reference_signals(model, rows, margin).items():
        assert out[key].item() == pytest.approx(value, rel=1e-10, abs=1e-12), key


def ranking_items() -> list[dict]:
    """items() plus a negative-only item: ranking needs a rejected rationale, not a positive."""
    rows = items()
    rows[2] = dict(rows[2], neg_ids=[6, 7, 8, 9, 37, 38, 43, 44], neg_n_rationale=2)  # invalid for the triplet
    rows.append(item([1, 4], [19], [45]))  # no negative at all: invalid for both
    return rows


def reference_seq_logp(model, ids, n_prefix) -> float:
    """sum of log p(token | earlier tokens) over the tokens after the prefix, one unpadded row."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(n_prefix, len(ids)))


def test_sequence_logp_sums_the_target_tokens(model):
    rows = ranking_items()
    batch = collate(rows, PAD, W_PREFIX, kind="ranking")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = sequence_logp(logits, batch["input_ids"], batch["target_mask"])
    for i, row in enumerate(rows):
        assert got[i].item() == pytest.approx(reference_seq_logp(model, row["input_ids"], row["n_prefix"]), rel=1e-10)
    assert batch["valid"].tolist() == [True, True, True, False]


def reference_dpo(c, r, rc, rr, beta) -> float:
    x = beta * ((c - rc) - (r - rr))
    return -math.log(1.0 / (1.0 + math.exp(-x)))


def test_preference_loss_matches_reference_with_gradients_through_the_policy_only():
    torch.manual_seed(2)
    c, r = (torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    rc, rr = (torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    valid = torch.tensor([True, True, False, True, False, True])
    beta = 0.7
    loss = preference_loss(c, r, rc, rr, valid, beta)
    terms = [reference_dpo(c[i].item(), r[i].item(), rc[i].item(), rr[i].item(), beta) for i in range(6) if valid[i]]
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    loss.backward()
    # d/dc of -log sigmoid(beta * m) / n = -beta * sigmoid(-beta * m) / n; the rejected term with the opposite sign.
    for i in range(6):
        m = (c[i] - rc[i] - (r[i] - rr[i])).item()
        want = -beta / (1.0 + math.exp(beta * m)) / len(terms) if valid[i] else 0.0
        assert c.grad[i].item() == pytest.approx(want, rel=1e-10, abs=1e-15)
        assert r.grad[i].item() == pytest.approx(-want, rel=1e-10, abs=1e-15)
    assert rc.grad is None and rr.grad is None  # pi_ref is a constant


def test_preference_loss_without_valid_items_is_zero_with_a_gradient_path():
    c = torch.tensor([-40.0, -1e4], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([-1.0, 0.0], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(2, dtype=torch.float64)
    loss = preference_loss(c, r, zero, zero, torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(c.grad, torch.zeros(2, dtype=torch.float64)) and not torch.isnan(r.grad).any()


def with_reference(rows, model) -> list[dict]:
    """The rows with pi_ref log-likelihoods: the policy's own, shifted, so the log-ratios are not all zero."""
    out = []
    for i, row in enumerate(rows):
        has = len(row["neg_ids"]) > 0
        out.append(dict(row, ref_chosen_logp=reference_seq_logp(model, row["input_ids"], row["n_prefix"]) + 0.3 * (i - 1),
                        ref_rejected_logp=reference_seq_logp(model, row["neg_ids"], row["n_prefix"]) + 0.2 if has else 0.0))
    return out


def test_ranking_objective_matches_reference(model):
    rows, beta = with_reference(ranking_items(), model), 0.5
    out = ReflectionObjective(model, weight=0.5, kind="ranking", beta=beta)(collate(rows, PAD, W_PREFIX, kind="ranking"))
    chosen, rejected = [], []
    for row in rows[:3]:  # the valid ones
        chosen.append(beta * (reference_seq_logp(model, row["input_ids"], row["n_prefix"]) - row["ref_chosen_logp"]))
        rejected.append(beta * (reference_seq_logp(model, row["neg_ids"], row["n_prefix"]) - row["ref_rejected_logp"]))
    rank = sum(-math.log(1.0 / (1.0 + math.exp(-(a - b)))) for a, b in zip(chosen, rejected)) / 3
    lm = reference_lm(model, rows)
    assert out["ref_loss"].item() == pytest.approx(rank, rel=1e-10)
    assert out["loss"].item() == pytest.approx(lm + 0.5 * rank, rel=1e-10)
    margins = [a - b for a, b in zip(chosen, rejected)]
    assert out["rewards/chosen"].item() == pytest.approx(sum(chosen) / 3, rel=1e-10)
    assert out["rewards/rejected"].item() == pytest.approx(sum(rejected) / 3, rel=1e-10)
    assert out["rewards/margins"].item() == pytest.approx(sum(margins) / 3, rel=1e-10)
    assert out["rewards/accuracies"].item() == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert 0 < sum(m > 0 for m in margins) < 3  # the shifts above make both outcomes occur


def test_reference_logps_are_the_policy_log_likelihoods(model):
    rows = ranking_items()
    objective = ReflectionObjective(model, weight=0.5, kind="ranking")
    chosen, rejected = objective.reference_logps(collate(rows, PAD, W_PREFIX, kind="ranking"))
    assert not chosen.requires_grad
    for i, row in enumerate(rows[:3]):
        assert chosen[i].item() == pytest.approx(reference_seq_logp(model, row["input_ids"], row["n_prefix"]), rel=1e-10)
        assert rejected[i].item() == pytest.approx(reference_seq_logp(model, row["neg_ids"], row["n_prefix"]), rel=1e-10)
    assert rejected[3].item() == 0.0  # the stand-in (bare prefix) has no target tokens


def test_ranking_gradients_reach_chosen_and_rejected_and_skip_invalid_items(model):
    # With pi_ref = the policy itself, the margin is 0 and every valid item pulls with the same weight.
    rows = ranking_items()
    objective = ReflectionObjective(model, weight=1.0, kind="ranking")
    ref_c, ref_r = objective.reference_logps(collate(rows, PAD, W_PREFIX, kind="ranking"))
    rows = [dict(row, ref_chosen_logp=c, ref_rejected_logp=r) for row, c, r in zip(rows, ref_c.tolist(), ref_r.tolist())]
    batch = collate(rows, PAD, W_PREFIX, kind="ranking")
    out = objective(batch)
    assert out["ref_loss"].item() == pytest.approx(math.log(2), rel=1e-10)  # -log sigmoid(0)
    assert out["rewards/accuracies"].item() == 0.0 and out["rewards/margins"].item() == pytest.approx(0, abs=1e-12)
    embeddings = model.model.embed_tokens.weight
    total = torch.autograd.grad(out["loss"], embeddings)[0]
    lm_only = torch.autograd.grad(ReflectionObjective(model, weight=0.0, kind="ranking")(batch)["loss"], embeddings)[0]
    row_norm = (total - lm_only).norm(dim=1)
    for name, tokens in {"chosen": [10, 11, 12, 13, 14, 15, 16, 17, 18], "rejected": [30, 31, 32, 33, 34, 35, 36, 37, 38]}.items():
        assert all(row_norm[t] > 0 for t in tokens), name
    assert row_norm[19] == 0 and row_norm[45] == 0, "the item without a negative has no L_rank gradient"
    assert not math.isnan(row_norm.sum().item())


# ------------------------------------------------------------------------------ hinge, redi, dpop (issue 21)


def reference_hinge(c, r, margin) -> float:
    return max(0.0, margin - (c - r))


def reference_dpop(c, r, rc, rr, beta, penalty) -> float:
    """arXiv 2402.13228, Eq. 3: DPO's margin less penalty * max(0, log pi_ref(t) - log pi(t)), inside beta."""
    x = beta * ((c - rc) - (r - rr) - penalty * max(0.0, rc - c))
    return math.log1p(math.exp(-x)) if x > -30 else -x  # -log sigmoid(x), exact at either end


def _pairs(seed: int):
    torch.manual_seed(seed)
    c, r = (torch.randn(7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    rc, rr = (torch.randn(7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    return c, r, rc, rr, torch.tensor([True, True, False, True, True, False, True])


def test_likelihood_hinge_matches_reference_and_acts_only_below_the_margin():
    c, r, _, _, valid = _pairs(3)
    margin = 0.4
    loss = likelihood_hinge_loss(c, r, valid, margin)
    terms = {i: reference_hinge(c[i].item(), r[i].item(), margin) for i in range(7) if valid[i]}
    assert loss.item() == pytest.approx(sum(terms.values()) / len(terms), rel=1e-12)
    assert 0 < sum(t > 0 for t in terms.values()) < len(terms)  # both active and satisfied hinges occur
    loss.backward()
    for i in range(7):  # d/dc of max(0, m - (c - r)) / n: -1/n where active, else 0; +1/n for r
        want = -1.0 / len(terms) if terms.get(i, 0.0) > 0 else 0.0
        assert c.grad[i].item() == pytest.approx(want, abs=1e-15)
        assert r.grad[i].item() == pytest.approx(-want, abs=1e-15)


def test_redi_is_the_mean_rejected_likelihood_over_valid_items():
    _, r, _, _, valid = _pairs(4)
    loss = redi_loss(r, valid)
    kept = [r[i].item() for i in range(7) if valid[i]]
    assert loss.item() == pytest.approx(sum(kept) / len(kept), rel=1e-12)
    loss.backward()
    assert r.grad.tolist() == pytest.approx([1.0 / len(kept) if v else 0.0 for v in valid.tolist()], abs=1e-15)


@pytest.mark.parametrize("penalty", [DPOP_PENALTY, 2.0, 0.0])
def test_dpop_matches_reference_with_gradients_through_the_policy_only(penalty):
    c, r, rc, rr, valid = _pairs(6)
    beta = 0.3
    loss = dpop_loss(c, r, rc, rr, valid, beta, penalty)
    terms = [reference_dpop(c[i].item(), r[i].item(), rc[i].item(), rr[i].item(), beta, penalty)
             for i in range(7) if valid[i]]
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    if penalty == 0.0:  # DPOP without its penalty is DPO
        assert loss.item() == pytest.approx(preference_loss(c, r, rc, rr, valid, beta).item(), rel=1e-12)
    assert any(rc[i] > c[i] for i in range(7) if valid[i]) and any(rc[i] < c[i] for i in range(7) if valid[i])
    loss.backward()
    n = len(terms)
    for i in range(7):  # d/dc: -beta * sigmoid(-x) * (1 + penalty [where log pi(t) < log pi_ref(t)]) / n
        ci, ri, rci, rri = c[i].item(), r[i].item(), rc[i].item(), rr[i].item()
        x = beta * ((ci - rci) - (ri - rri) - penalty * max(0.0, rci - ci))
        s = 1.0 / (1.0 + math.exp(x))
        want_c = -beta * s * (1.0 + (penalty if rci > ci else 0.0)) / n if valid[i] else 0.0
        want_r = beta * s / n if valid[i] else 0.0
        assert c.grad[i].item() == pytest.approx(want_c, rel=1e-10, abs=1e-15)
        assert r.grad[i].item() == pytest.approx(want_r, rel=1e-10, abs=1e-15)
    assert rc.grad is None and rr.grad is None  # pi_ref is a constant


@pytest.mark.parametrize("kind", ["hinge", "redi", "dpop"])
def test_new_losses_without_valid_items_are_zero_with_a_gradient_path(kind):
    c = torch.tensor([-40.0, -1e4], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([-1.0, 0.0], dtype=torch.float64, requires_grad=True)
    zero, none = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.bool)
    loss = {"hinge": lambda: likelihood_hinge_loss(c, r, none, 0.5), "redi": lambda: redi_loss(r, none),
            "dpop": lambda: dpop_loss(c, r, zero, zero, none)}[kind]()
    assert loss.item() == 0.0 and loss.requires_grad and loss.dtype == torch.float64
    loss.backward()
    assert torch.equal(r.grad, torch.zeros(2, dtype=torch.float64))
    assert c.grad is None or not torch.isnan(c.grad).any()


def reference_mean_logp(model, ids, n_prefix) -> float:
    return reference_seq_logp(model, ids, n_prefix) / (len(ids) - n_prefix)


@pytest.mark.parametrize("kind", ["hinge", "redi", "dpop"])
def test_likelihood_objectives_match_reference(model, kind):
    """L = L_lm + λ·L_kind through ReflectionObjective, from per-row references (unpadded forwards), and the
    signals: ℓ̄(t), ℓ̄(m), their gap; the active hinges; dpop's rewards and penalty term."""
    rows, beta, margin, penalty, weight = with_reference(ranking_items(), model), 0.5, 0.3, 2.0, 0.7
    out = ReflectionObjective(model, weight=weight, margin=margin, kind=kind, beta=beta, penalty=penalty)(
        collate(rows, PAD, W_PREFIX, kind=kind))
    assert out["n_valid"].item() == 3
    valid = rows[:3]
    lt = [reference_mean_logp(model, row["input_ids"], row["n_prefix"]) for row in valid]
    lm_ = [reference_mean_logp(model, row["neg_ids"], row["n_prefix"]) for row in valid]
    if kind == "hinge":
        want = sum(reference_hinge(a, b, margin) for a, b in zip(lt, lm_)) / 3
        assert out["hinge_active"].item() == pytest.approx(sum(a - b < margin for a, b in zip(lt, lm_)) / 3)
    elif kind == "redi":
        want = sum(lm_) / 3
    else:
        c = [reference_seq_logp(model, row["input_ids"], row["n_prefix"]) for row in valid]
        r = [reference_seq_logp(model, row["neg_ids"], row["n_prefix"]) for row in valid]
        want = sum(reference_dpop(c[i], r[i], row["ref_chosen_logp"], row["ref_rejected_logp"], beta, penalty)
                   for i, row in enumerate(valid)) / 3
        shortfall = [max(0.0, row["ref_chosen_logp"] - c[i]) for i, row in enumerate(valid)]
        assert out["dpop_penalty"].item() == pytest.approx(sum(shortfall) / 3, rel=1e-10, abs=1e-12)
        assert 0 < sum(s > 0 for s in shortfall) < 3  # with_reference's shifts put t on both sides of pi_ref
        assert out["rewards/chosen"].item() == pytest.approx(
            sum(beta * (c[i] - row["ref_chosen_logp"]) for i, row in enumerate(valid)) / 3, rel=1e-10)
    assert out["ref_loss"].item() == pytest.approx(want, rel=1e-10)
    assert out["loss"].item() == pytest.approx(reference_lm(model, rows) + weight * want, rel=1e-10)
    assert out["loglik_chosen"].item() == pytest.approx(sum(lt) / 3, rel=1e-10)
    assert out["loglik_rejected"].item() == pytest.approx(sum(lm_) / 3, rel=1e-10)
    assert out["loglik_gap"].item() == pytest.approx((sum(lt) - sum(lm_)) / 3, rel=1e-10)


@pytest.mark.parametrize("kind", ["hinge", "redi", "dpop"])
def test_likelihood_gradients_skip_items_without_a_negative(model, kind):
    rows = with_reference(ranking_items(), model)
    batch = collate(rows, PAD, W_PREFIX, kind=kind)
    embeddings = model.model.embed_tokens.weight
    # margin 10 nats/token: every hinge active, so each valid item pulls
    total = torch.autograd.grad(ReflectionObjective(model, weight=1.0, margin=10.0, kind=kind)(batch)["loss"], embeddings)[0]
    lm_only = torch.autograd.grad(ReflectionObjective(model, weight=0.0, kind=kind)(batch)["loss"], embeddings)[0]
    row_norm = (total - lm_only).norm(dim=1)
    assert all(row_norm[t] > 0 for t in [30, 31, 32, 33, 34, 35, 36, 37, 38]), "the rejected tokens get a gradient"
    assert row_norm[19] == 0 and row_norm[45] == 0, "the item without a negative has no L_kind gradient"
    assert not math.isnan(row_norm.sum().item())


# ------------------------------------------------------------------------------------------------ bounded memory:
# the chunked log-likelihoods (logits from hidden states through the LM head, a few positions at a time) and the
# trainer's token-budget micro-batches compute the same loss and gradients as the whole batch's full logits.


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunked_log_likelihoods_equal_the_full_logits_ones_with_gradients(model, chunk):
    from rbyr_ray.train.losses import sequence_logp_chunked, weighted_lm_loss_chunked

    batch = collate(ranking_items(), PAD, W_PREFIX, kind="ranking")
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden = hidden.detach().requires_grad_(True)
    full = weighted_lm_loss(model.lm_head(hidden), batch["labels"], batch["weights"])
    (grad_full,) = torch.autograd.grad(full, hidden)
    chunked = weighted_lm_loss_chunked(hidden, model.lm_head, batch["labels"], batch["weights"], chunk)
    (grad_chunked,) = torch.autograd.grad(chunked, hidden)
    assert chunked.item() == pytest.approx(full.item(), rel=1e-12)
    assert torch.allclose(grad_chunked, grad_full, rtol=1e-10, atol=1e-14)
    want = sequence_logp(model.lm_head(hidden), batch["input_ids"], batch["target_mask"])
    got = sequence_logp_chunked(hidden, model.lm_head, batch["input_ids"], batch["target_mask"], chunk)
    assert torch.allclose(got, want, rtol=1e-12) and got.shape == (4,)
    (g1,) = torch.autograd.grad(got.sum(), hidden)
    (g2,) = torch.autograd.grad(want.sum(), hidden)
    assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14)


def _grads(module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters() if p.grad is not None])


@pytest.mark.parametrize("kind", ["triplet", "ranking", "hinge", "redi", "dpop"])
def test_objective_chunked_equals_full_logits(model, kind):
    rows = items() if kind == "triplet" else with_reference(ranking_items(), model)
    batch = collate(rows, PAD, W_PREFIX, kind=kind)
    results = []
    for chunk in (0, 2):
        model.zero_grad()
        out = ReflectionObjective(model, weight=0.7, margin=0.3, kind=kind, chunk_tokens=chunk)(batch)
        out["loss"].backward()
        results.append((out["loss"].item(), out["ref_loss"].item(), _grads(model)))
    model.zero_grad()
    (loss0, ref0, grad0), (loss2, ref2, grad2) = results
    assert ref0 > 0 or kind == "redi"
    assert loss2 == pytest.approx(loss0, rel=1e-12) and ref2 == pytest.approx(ref0, rel=1e-10, abs=1e-14)
    assert torch.allclose(grad2, grad0, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("kind", ["triplet", "ranking"])
def test_token_budget_micro_batches_give_the_whole_batch_gradient(model, kind):
    """trainer.run_batch with a budget that cuts the batch into one item per micro-batch: the same L_lm, the same
    item sums of L_ref and the same accumulated gradient as the batch in one forward."""
    from rbyr_ray.config import TrainConfig
    from rbyr_ray.train.trainer import micro_batches, run_batch

    rows = items() if kind == "triplet" else with_reference(ranking_items(), model)
    rows = [dict(row, has_negative=len(row["neg_ids"]) > 0) for row in rows]
    results = []
    for budget in (None, 1):  # 1: every item alone
        cfg = TrainConfig(w_prefix=W_PREFIX, max_tokens_per_micro_batch=budget, logits_chunk_tokens=0,
                          reflection={"kind": kind, "weight": 0.7, "margin": 0.3})
        model.zero_grad()
        done = run_batch(ReflectionObjective(model, weight=0.7, margin=0.3, kind=kind), rows,
                         list(range(len(rows))), cfg, PAD, torch.device("cpu"), None, seed=0)
        results.append((done, _grads(model)))
    model.zero_grad()
    (whole, grad_whole), (split, grad_split) = results
    assert whole["micro"] == 1 and split["micro"] == len(rows)
    if kind == "triplet":  # shortest first (item 2 has no triplet: its anchor alone); a large budget: one batch
        assert micro_batches(rows, [0, 1, 2], 1, kind, True) == [[2], [1], [0]]
        assert micro_batches(rows, [0, 1, 2], 10_000, kind, True) == [[0, 1, 2]]
    assert split["lm_loss"] == pytest.approx(whole["lm_loss"], rel=1e-12)
    assert split["n_valid"] == whole["n_valid"] > 0
    assert split["item_sums"] == pytest.approx(whole["item_sums"], rel=1e-10)
    # Alone, the item without what L_ref needs skips the extra forward its bare prefix stood in for.
    assert whole["tokens"] - split["tokens"] == (2 * 4 if kind == "triplet" else 2)
    assert torch.allclose(grad_split, grad_whole, rtol=1e-9, atol=1e-13)
