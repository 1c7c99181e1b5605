"""The training objective as one module, so that DDP/FSDP wrap both forwards in a single `forward` call.

    objective = ReflectionObjective(model, weight=0.5, margin=1.0, pooling="last")        # the paper's triplet
    objective = ReflectionObjective(model, weight=0.5, kind="ranking", beta=0.1)          # the DPO-style variant
    out = objective(batch)          # {"loss", "lm_loss", "ref_loss", "n_valid", + the signals of SIGNALS[kind]}
    out["loss"].backward()

A batch (see rbyr_ray.train.data.collate) holds, per item: the anchor sequence prefix(q) + teacher rationale
(`input_ids`, `attention_mask`, `labels`, `weights`, `rationale_mask`, `target_mask`), its positive prefix(q) +
another teacher rationale and its negative prefix(q) + one of the student's wrong rationales (`pos_*`, `neg_*`),
and `valid`, true where the item has what its kind needs (triplet: both; ranking: a negative). For `ranking`
it also holds `ref_chosen_logp`/`ref_rejected_logp`, the round's starting weights' log-likelihoods (computed
once before training by `reference_logps`).

The signals are means over the batch's valid items, for logs only: triplet cos(a,p), cos(a,n), their gap
and the fraction of active hinges; ranking TRL's rewards (beta * log-ratio) and how often the teacher wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses import pool, preference_loss, reflection_loss, sequence_logp, total_loss, weighted_lm_loss

SIGNALS = {"triplet": ("reflection_cos_ap", "reflection_cos_an", "reflection_gap", "reflection_active"),
           "ranking": ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")}


def _backbone(model: nn.Module) -> nn.Module:
    """The decoder stack (LoRA layers included) without the LM head: p/n need hidden states, not logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


class ReflectionObjective(nn.Module):
    def __init__(self, model: nn.Module, weight: float = 0.5, margin: float = 1.0, pooling: str = "last",
                 kind: str = "triplet", beta: float = 0.1):
        super().__init__()
        self.model, self.weight, self.margin, self.pooling, self.kind, self.beta = model, weight, margin, pooling, kind, beta

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # One pass over the anchors gives L_lm, the anchor representations and the chosen log-likelihoods.
        triplet = self.kind == "triplet"
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=self.weight > 0 and triplet)
        lm = weighted_lm_loss(out.logits, batch["labels"], batch["weights"])
        valid = batch["valid"].bool()
        if self.weight == 0 or not bool(valid.any()):
            ref = out.logits.sum() * 0.0  # zero, attached to the graph (DDP sees every parameter used)
            return {"loss": total_loss(lm, ref, self.weight), "lm_loss": lm.detach(), "ref_loss": ref.detach(),
                    "n_valid": torch.zeros((), device=lm.device)}
        ref, signals = (self._triplet(out.hidden_states[-1], batch, valid) if triplet
                        else self._ranking(out.logits, batch, valid))
        return {"loss": total_loss(lm, ref, self.weight), "lm_loss": lm.detach(), "ref_loss": ref.detach(),
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

    def _ranking(self, logits: torch.Tensor, batch: dict, valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
        chosen = sequence_logp(logits, batch["input_ids"], batch["target_mask"])
        rejected = self._logp(batch["neg_input_ids"], batch["neg_attention_mask"], batch["neg_target_mask"])
        ref = preference_loss(chosen, rejected, batch["ref_chosen_logp"], batch["ref_rejected_logp"], valid, self.beta)
        with torch.no_grad():  # TRL's DPO logs: rewards are beta * log-ratios against the reference
            r_chosen = (self.beta * (chosen.double() - batch["ref_chosen_logp"].double()))[valid]
            r_rejected = (self.beta * (rejected.double() - batch["ref_rejected_logp"].double()))[valid]
            signals = {"rewards/chosen": r_chosen.mean(), "rewards/rejected": r_rejected.mean(),
                       "rewards/margins": (r_chosen - r_rejected).mean(),
                       "rewards/accuracies": (r_chosen > r_rejected).double().mean()}
        return ref, signals

    def _logp(self, ids: torch.Tensor, mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        return sequence_logp(self.model(input_ids=ids, attention_mask=mask).logits, ids, target_mask)

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_ref of the chosen (anchor) and rejected (negative) targets [B]: call on the starting weights."""
        return (self._logp(batch["input_ids"], batch["attention_mask"], batch["target_mask"]),
                self._logp(batch["neg_input_ids"], batch["neg_attention_mask"], batch["neg_target_mask"]))
