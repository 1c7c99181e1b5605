"""The training objective as one module, so that DDP/FSDP wrap both forwards in a single `forward` call.

    objective = ReflectionObjective(model, weight=0.5, margin=1.0, pooling="last")        # the paper's triplet
    objective = ReflectionObjective(model, weight=0.5, kind="ranking", beta=0.1)          # the DPO-style variant
    objective = ReflectionObjective(model, weight=0.5, kind="hinge", margin=0.5)          # or "redi", "dpop"
    out = objective(batch)          # {"loss", "lm_loss", "ref_loss", "n_valid", + the signals of SIGNALS[kind]}
    out["loss"].backward()

A batch (see rbyr_ray.train.data.collate) holds, per item: the anchor sequence prefix(q) + teacher rationale
(`input_ids`, `attention_mask`, `labels`, `weights`, `rationale_mask`, `target_mask`), its positive prefix(q) +
another teacher rationale and its negative prefix(q) + one of the student's wrong rationales (`pos_*`, `neg_*`),
and `valid`, true where the item has what its kind needs (triplet: both; the others: a negative). For
`ranking` and `dpop` it also holds `ref_chosen_logp`/`ref_rejected_logp`, the round's starting weights'
log-likelihoods (computed once before training by `reference_logps`).

The signals are means over the batch's valid items, for logs only: triplet cos(a,p), cos(a,n), their gap
and the fraction of active hinges; ranking TRL's rewards (beta * log-ratio) and how often the teacher wins;
hinge, redi, dpop the mean token log-likelihoods ℓ̄(t), ℓ̄(m) and their gap (hinge: the fraction of active
hinges; dpop: TRL's rewards and the mean penalty term max(0, log pi_ref(t) - log pi(t))).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .losses import (
    DPOP_PENALTY,
    dpop_loss,
    likelihood_hinge_loss,
    pool,
    preference_loss,
    redi_loss,
    reflection_loss,
    sequence_logp,
    sequence_logp_chunked,
    target_tokens,
    total_loss,
    weighted_lm_loss,
    weighted_lm_loss_chunked,
)

_REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
_LIKELIHOODS = ("loglik_chosen", "loglik_rejected", "loglik_gap")  # ℓ̄(t), ℓ̄(m), ℓ̄(t) - ℓ̄(m)
SIGNALS = {"triplet": ("reflection_cos_ap", "reflection_cos_an", "reflection_gap", "reflection_active"),
           "ranking": _REWARDS,
           "hinge": (*_LIKELIHOODS, "hinge_active"),
           "redi": _LIKELIHOODS,
           "dpop": (*_REWARDS, "dpop_penalty", *_LIKELIHOODS)}
PAIR_KINDS = ("ranking", "hinge", "redi", "dpop")  # need a negative, not a positive
REFERENCE_KINDS = ("ranking", "dpop")  # need pi_ref's log-likelihoods


def _backbone(model: nn.Module) -> nn.Module:
    """The decoder stack (LoRA layers included) without the LM head: p/n need hidden states, not logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


@dataclass
class _Pass:
    """One forward over a batch of sequences: full logits [B,T,V], or (chunked) only the final hidden states."""

    logits: torch.Tensor | None
    hidden: torch.Tensor | None  # final (normed) hidden states [B,T,H], when asked for or chunked


class ReflectionObjective(nn.Module):
    """`chunk_tokens` > 0: losses on log-likelihoods get logits from the hidden states through the LM head that
    many token positions at a time (losses.token_logps), never the whole batch's [B,T,V]; 0: the model's logits.
    A batch may carry `lm_share` and `ref_share`: its part of a larger batch's L_lm and L_ref (the trainer's
    token-budget micro-batches; see trainer.run_batch), so that summed gradients are the whole batch's."""

    def __init__(self, model: nn.Module, weight: float = 0.5, margin: float = 1.0, pooling: str = "last",
                 kind: str = "triplet", beta: float = 0.1, penalty: float = DPOP_PENALTY, chunk_tokens: int = 0):
        super().__init__()
        self.model, self.weight, self.margin, self.pooling, self.kind, self.beta = model, weight, margin, pooling, kind, beta
        self.penalty, self.chunk_tokens = penalty, chunk_tokens

    def _pass(self, ids: torch.Tensor, mask: torch.Tensor, hidden: bool = False) -> _Pass:
        if self.chunk_tokens:
            return _Pass(None, _backbone(self.model)(input_ids=ids, attention_mask=mask).last_hidden_state)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
        return _Pass(out.logits, out.hidden_states[-1] if hidden else None)

    def _head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def _lm_loss(self, p: _Pass, batch: dict) -> torch.Tensor:
        if p.logits is not None:
            return weighted_lm_loss(p.logits, batch["labels"], batch["weights"])
        return weighted_lm_loss_chunked(p.hidden, self._head(), batch["labels"], batch["weights"], self.chunk_tokens)

    def _seq_logp(self, p: _Pass, ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        if p.logits is not None:
            return sequence_logp(p.logits, ids, target_mask)
        return sequence_logp_chunked(p.hidden, self._head(), ids, target_mask, self.chunk_tokens)

    @staticmethod
    def _shares(lm: torch.Tensor, ref: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """This batch's parts of a larger batch's L_lm and L_ref (1 and 1 for a whole batch)."""
        lm_share, ref_share = batch.get("lm_share"), batch.get("ref_share")
        return (lm if lm_share is None else lm * lm_share.to(lm.dtype),
                ref if ref_share is None else ref * ref_share.to(ref.dtype))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # One pass over the anchors gives L_lm, the anchor representations and the chosen log-likelihoods.
        triplet = self.kind == "triplet"
        out = self._pass(batch["input_ids"], batch["attention_mask"], hidden=self.weight > 0 and triplet)
        lm = self._lm_loss(out, batch)
        valid = batch["valid"].bool()
        if self.weight == 0 or not bool(valid.any()):
            ref = lm * 0.0  # zero, attached to the graph (DDP sees every parameter used)
            return {"loss": total_loss(*self._shares(lm, ref, batch), self.weight), "lm_loss": lm.detach(), "ref_loss": ref.detach(),
                    "n_valid": torch.zeros((), device=lm.device)}
        if triplet:
            ref, signals = self._triplet(out.hidden, batch, valid)
        elif self.kind == "ranking":
            ref, signals = self._ranking(out, batch, valid)
        else:
            ref, signals = self._likelihood(out, batch, valid)
        return {"loss": total_loss(*self._shares(lm, ref, batch), self.weight), "lm_loss": lm.detach(), "ref_loss": ref.detach(),
                "n_valid": valid.sum().to(lm.dtype), **signals}

    def _triplet(self, hidden: torch.Tensor, batch: dict, valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
        anchor = pool(hidden, batch["attention_mask"], self.pooling, batch.get("rationale_mask"))
        # Positives and negatives share one extra batched forward.
        pn_ids = torch.cat([batch["pos_input_ids"], batch["neg_input_ids"]])
        pn_mask = torch.cat([batch["pos_attention_mask"], batch["neg_attention_mask"]])
        hidden = _backbone(self.model)(input_ids=pn_ids, attention_mask=pn_mask).last_hidden_state
        pn_rationale = None
        if self.pooling == "mean":
            pn_rationale = torch.cat([batch["pos_rationale_mask"], batch["neg_rationale_mask"]])
        positive, negative = pool(hidden, pn_mask, self.pooling, pn_rationale).chunk(2)
        ref = reflection_loss(anchor, positive, negative, valid, self.margin)
        with torch.no_grad():
            cos_ap = F.cosine_similarity(anchor.double(), positive.double(), dim=-1)[valid]
            cos_an = F.cosine_similarity(anchor.double(), negative.double(), dim=-1)[valid]
            gap = cos_ap - cos_an
            signals = {"reflection_cos_ap": cos_ap.mean(), "reflection_cos_an": cos_an.mean(),
                       "reflection_gap": gap.mean(),  # Δ = cos(a,p) - cos(a,n)
                       "reflection_active": (gap < self.margin).double().mean()}  # the hinge acts where Δ < margin
        return ref, signals

    def _ranking(self, anchors: _Pass, batch: dict, valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
        chosen = self._seq_logp(anchors, batch["input_ids"], batch["target_mask"])
        rejected = self._logp(batch["neg_input_ids"], batch["neg_attention_mask"], batch["neg_target_mask"])
        ref = preference_loss(chosen, rejected, batch["ref_chosen_logp"], batch["ref_rejected_logp"], valid, self.beta)
        return ref, self._rewards(chosen, rejected, batch, valid)

    @torch.no_grad()
    def _rewards(self, chosen: torch.Tensor, rejected: torch.Tensor, batch: dict, valid: torch.Tensor) -> dict:
        """TRL's DPO logs: rewards are beta * log-ratios against the reference."""
        r_chosen = (self.beta * (chosen.double() - batch["ref_chosen_logp"].double()))[valid]
        r_rejected = (self.beta * (rejected.double() - batch["ref_rejected_logp"].double()))[valid]
        return {"rewards/chosen": r_chosen.mean(), "rewards/rejected": r_rejected.mean(),
                "rewards/margins": (r_chosen - r_rejected).mean(),
                "rewards/accuracies": (r_chosen > r_rejected).double().mean()}

    def _likelihood(self, anchors: _Pass, batch: dict, valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """hinge, redi, dpop: on the summed (dpop) or mean token (hinge, redi) log-likelihoods of t and m."""
        chosen = self._seq_logp(anchors, batch["input_ids"], batch["target_mask"])
        rejected = self._logp(batch["neg_input_ids"], batch["neg_attention_mask"], batch["neg_target_mask"])
        chosen_mean = chosen / target_tokens(batch["target_mask"])
        rejected_mean = rejected / target_tokens(batch["neg_target_mask"])
        if self.kind == "hinge":
            ref = likelihood_hinge_loss(chosen_mean, rejected_mean, valid, self.margin)
        elif self.kind == "redi":
            ref = redi_loss(rejected_mean, valid)
        else:
            ref = dpop_loss(chosen, rejected, batch["ref_chosen_logp"], batch["ref_rejected_logp"], valid,
                            self.beta, self.penalty)
        with torch.no_grad():
            c, r = chosen_mean.double()[valid], rejected_mean.double()[valid]
            signals = {"loglik_chosen": c.mean(), "loglik_rejected": r.mean(), "loglik_gap": (c - r).mean()}
            if self.kind == "hinge":  # the hinge acts where ℓ̄(t) - ℓ̄(m) < δ
                signals["hinge_active"] = ((c - r) < self.margin).double().mean()
            if self.kind == "dpop":  # TRL's rewards, and how far log pi(t) is below log pi_ref(t)
                shortfall = torch.clamp(batch["ref_chosen_logp"].double() - chosen.double(), min=0.0)[valid]
                signals |= self._rewards(chosen, rejected, batch, valid) | {"dpop_penalty": shortfall.mean()}
        return ref, signals

    def _logp(self, ids: torch.Tensor, mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        return self._seq_logp(self._pass(ids, mask), ids, target_mask)

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_ref of the chosen (anchor) and rejected (negative) targets [B]: call on the starting weights."""
        return (self._logp(batch["input_ids"], batch["attention_mask"], batch["target_mask"]),
                self._logp(batch["neg_input_ids"], batch["neg_attention_mask"], batch["neg_target_mask"]))
