"""The losses of METHOD.md, short enough to check against the formulas by eye.

    L = L_lm + lambda * L_ref          (L_ref: the triplet, or the ranking variant L_rank)

L_lm   = sum_t w_t * CE_t / #non-pad tokens      (w = w_prefix on prefix tokens, 1 on target tokens, 0 on pads)
L_ref  = mean over valid items of max(0, margin - cos(a, p) + cos(a, n))
L_rank = mean over valid items of -log sigmoid(beta * ((log pi(t|x) - log pi_ref(t|x)) - (log pi(m|x) - log pi_ref(m|x))))
         t the teacher's rationale (chosen), m the student's wrong one (rejected): DPO's loss
L_hinge = mean over valid items of max(0, delta - (l(t) - l(m)))        l(y): mean token log-likelihood of y
L_redi  = mean over valid items of l(m)                                  (REDI: L_lm + alpha * l(m))
L_dpop  = L_rank with beta * penalty * max(0, log pi_ref(t|x) - log pi(t|x)) subtracted inside the sigmoid
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of padding positions


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 activations are upcast for the loss; float64 (the tests) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Token-weighted causal-LM cross-entropy.

    logits [B,T,V] and labels [B,T] as a causal LM's forward takes them (this function shifts by one token:
    position t predicts label t+1); weights [B,T] aligned with labels. Label -100 marks padding.
    Returns sum(weight * CE) over non-pad positions / number of non-pad positions.
    """
    logits, labels, weights = logits[:, :-1], labels[:, 1:], weights[:, 1:]
    mask = labels != IGNORE
    ce = F.cross_entropy(_at_least_fp32(logits.reshape(-1, logits.size(-1))), labels.reshape(-1).clamp(min=0),
                         reduction="none").view_as(labels)
    return (ce * weights.to(ce.dtype) * mask).sum() / mask.sum().clamp(min=1)


def reflection_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, valid: torch.Tensor,
                    margin: float = 1.0) -> torch.Tensor:
    """Triplet loss on cosine similarity over [B,H] representations.

    valid [B] (bool) marks items that have both a positive and a negative; the others contribute nothing.
    Returns the mean over valid items of max(0, margin - cos(a,p) + cos(a,n)); 0 (still attached to the
    graph, never NaN) when no item is valid.
    """
    anchor, positive, negative = _at_least_fp32(anchor), _at_least_fp32(positive), _at_least_fp32(negative)
    cos_ap = F.cosine_similarity(anchor, positive, dim=-1)
    cos_an = F.cosine_similarity(anchor, negative, dim=-1)
    per_item = torch.clamp(margin - cos_ap + cos_an, min=0.0)
    per_item = torch.where(valid, per_item, torch.zeros_like(per_item))
    return per_item.sum() / valid.sum().clamp(min=1)


def sequence_logp(logits: torch.Tensor, labels: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """log pi(target | prefix) per sequence [B]: the sum of token log-probabilities where target_mask [B,T] is 1.

    Shifted like weighted_lm_loss: position t predicts label t+1, so target_mask marks the predicted tokens
    (rationale, answer line, eos), never the prefix or pads.
    """
    logits, labels, mask = logits[:, :-1], labels[:, 1:], target_mask[:, 1:].bool()
    logp = -F.cross_entropy(_at_least_fp32(logits.reshape(-1, logits.size(-1))), labels.reshape(-1).clamp(min=0),
                            reduction="none").view_as(labels)
    return (logp * mask).sum(1)


# ------------------------------------------------------------------------------------------------ chunked: the same
# two quantities from final hidden states [B,T,H] and the LM head, never holding [B,T,V] logits. A causal LM's logits
# are head(hidden); only the positions a loss reads get logits, `chunk` of them at a time, and each chunk's are
# recomputed in the backward pass instead of kept (vocab 49152 x 8 sequences x 318 tokens is 0.5 GB per float32 copy).


def _chunk_logp(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(_at_least_fp32(head(hidden)), labels, reduction="none")


def token_logps(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, mask: torch.Tensor,
                chunk: int) -> torch.Tensor:
    """log p(label t+1 | tokens <= t) at the positions where mask[:, 1:] is true, flattened [N] (row-major), from
    hidden [B,T,H]; the logits of at most `chunk` positions exist at once, in the forward and the backward pass."""
    from torch.utils.checkpoint import checkpoint

    keep = mask[:, 1:].bool()
    rows, targets = hidden[:, :-1][keep], labels[:, 1:][keep].clamp(min=0)
    parts = [checkpoint(_chunk_logp, head, rows[i:i + chunk], targets[i:i + chunk], use_reentrant=False)
             if torch.is_grad_enabled() else _chunk_logp(head, rows[i:i + chunk], targets[i:i + chunk])
             for i in range(0, rows.size(0), chunk)]
    return torch.cat(parts) if parts else rows.new_zeros(0)


def weighted_lm_loss_chunked(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                             weights: torch.Tensor, chunk: int) -> torch.Tensor:
    """weighted_lm_loss(head(hidden), labels, weights), computed `chunk` token positions at a time."""
    mask = labels != IGNORE
    logp = token_logps(hidden, head, labels, mask, chunk)
    w = weights[:, 1:][mask[:, 1:]].to(logp.dtype)
    return -(logp * w).sum() / mask[:, 1:].sum().clamp(min=1)


def sequence_logp_chunked(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                          target_mask: torch.Tensor, chunk: int) -> torch.Tensor:
    """sequence_logp(head(hidden), labels, target_mask) [B], computed `chunk` token positions at a time."""
    keep = target_mask[:, 1:].bool()
    logp = token_logps(hidden, head, labels, target_mask, chunk)
    rows = keep.nonzero()[:, 0]
    return logp.new_zeros(labels.size(0)).index_add(0, rows, logp)


def preference_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, ref_chosen_logp: torch.Tensor,
                    ref_rejected_logp: torch.Tensor, valid: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO's loss on [B] summed log-likelihoods: the teacher's rationale (chosen) over the student's mistake (rejected).

    valid [B] (bool) marks items that have a rejected rationale. The reference terms are constants (pi_ref is
    the round's starting weights), so gradients flow through the policy terms only. Returns the mean over
    valid items of -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)); 0 (attached to the graph,
    never NaN) when no item is valid.
    """
    chosen, rejected = _at_least_fp32(chosen_logp), _at_least_fp32(rejected_logp)
    margin = (chosen - ref_chosen_logp.detach().to(chosen.dtype)) - (rejected - ref_rejected_logp.detach().to(chosen.dtype))
    per_item = -F.logsigmoid(beta * margin)
    per_item = torch.where(valid, per_item, torch.zeros_like(per_item))
    return per_item.sum() / valid.sum().clamp(min=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "last",
         rationale_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A sequence representation from final-layer hidden states [B,T,H].

    last: the hidden state of the last non-pad token (the eos) - works for left or right padding.
    mean: the mean over the rationale tokens (rationale_mask [B,T]).
    """
    if mode == "last":
        positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
        last = (attention_mask.bool() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    if mode == "mean":
        mask = (rationale_mask if rationale_mask is not None else attention_mask).to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    raise ValueError(f"unknown pooling {mode!r}: expected 'last' or 'mean'")


def total_loss(lm: torch.Tensor, ref: torch.Tensor, weight: float) -> torch.Tensor:
    """L = L_lm + lambda * L_ref; with lambda = 0 exactly L_lm."""
    return lm + weight * ref if weight else lm


# ------------------------------------------------------------------------------------------------ learning from
# mistakes on sequence likelihoods (METHOD.md "beyond the paper"): ℓ̄(y) = the mean token log-likelihood of a target
# (rationale, answer line, eos) given the prefix; t the teacher's rationale (chosen), m the student's wrong one.

DPOP_PENALTY = 50.0  # λ_p of DPO-Positive: the paper's (arXiv 2402.13228); also PaddlePaddle's DPO dpop_lambda default


def target_tokens(target_mask: torch.Tensor) -> torch.Tensor:
    """Tokens per sequence that sequence_logp sums over [B] (at least 1): divide by it for ℓ̄(y)."""
    return target_mask[:, 1:].sum(1).clamp(min=1)


def _masked_mean(per_item: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The mean over valid items; 0 attached to the graph (never NaN) when none is valid."""
    per_item = torch.where(valid, per_item, torch.zeros_like(per_item))
    return per_item.sum() / valid.sum().clamp(min=1)


def likelihood_hinge_loss(chosen_mean_logp: torch.Tensor, rejected_mean_logp: torch.Tensor, valid: torch.Tensor,
                          margin: float) -> torch.Tensor:
    """SLiC-style likelihood hinge on [B] mean token log-likelihoods: mean over valid items of
    max(0, margin - (ℓ̄(t) - ℓ̄(m))), margin δ in nats per token. It acts only on negatives the student still
    finds nearly as likely as the teacher's rationale."""
    chosen, rejected = _at_least_fp32(chosen_mean_logp), _at_least_fp32(rejected_mean_logp)
    return _masked_mean(torch.clamp(margin - (chosen - rejected.to(chosen.dtype)), min=0.0), valid)


def redi_loss(rejected_mean_logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """REDI's negative term (arXiv 2505.24850), reference-free: the mean over valid items of ℓ̄(m). Minimizing
    L_lm + α·ℓ̄(m) keeps the NLL on the teacher's rationale and pushes the student's mistake down."""
    return _masked_mean(_at_least_fp32(rejected_mean_logp), valid)


def dpop_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, ref_chosen_logp: torch.Tensor,
              ref_rejected_logp: torch.Tensor, valid: torch.Tensor, beta: float = 0.1,
              penalty: float = DPOP_PENALTY) -> torch.Tensor:
    """DPO-Positive (arXiv 2402.13228, Eq. 3) on [B] summed log-likelihoods: the mean over valid items of
    -log sigmoid(beta * ((log pi(t) - log pi_ref(t)) - (log pi(m) - log pi_ref(m)) - penalty * max(0, log pi_ref(t) - log pi(t)))).
    The penalty is 0 while the chosen likelihood stays at or above the reference's, so DPO cannot buy its margin
    by lowering the teacher's rationale. Reference terms are constants; penalty = 0 is preference_loss."""
    chosen, rejected = _at_least_fp32(chosen_logp), _at_least_fp32(rejected_logp)
    ref_chosen, ref_rejected = ref_chosen_logp.detach().to(chosen.dtype), ref_rejected_logp.detach().to(chosen.dtype)
    shortfall = torch.clamp(ref_chosen - chosen, min=0.0)
    margin = (chosen - ref_chosen) - (rejected - ref_rejected) - penalty * shortfall
    return _masked_mean(-F.logsigmoid(beta * margin), valid)
