"""The training objective as one module, so that DDP/FSDP wrap both forwards in a single `forward` call.

    objective = ReflectionObjective(model, weight=0.5, margin=1.0, pooling="last")
    out = objective(batch)          # {"loss", "lm_loss", "ref_loss"}
    out["loss"].backward()

A batch (see rbyr_ray.train.data.collate) holds, per item: the anchor sequence prefix(q) + teacher rationale
(`input_ids`, `attention_mask`, `labels`, `weights`, `rationale_mask`), its positive prefix(q) + another teacher
rationale and its negative prefix(q) + one of the student's wrong rationales (`pos_*`, `neg_*`), and `valid`,
true where the item has both.
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import pool, reflection_loss, total_loss, weighted_lm_loss


def _backbone(model: nn.Module) -> nn.Module:
    """The decoder stack (LoRA layers included) without the LM head: p/n need hidden states, not logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


class ReflectionObjective(nn.Module):
    def __init__(self, model: nn.Module, weight: float = 0.5, margin: float = 1.0, pooling: str = "last"):
        super().__init__()
        self.model, self.weight, self.margin, self.pooling = model, weight, margin, pooling

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # One pass over the anchors gives both L_lm and the anchor representations.
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=self.weight > 0)
        lm = weighted_lm_loss(out.logits, batch["labels"], batch["weights"])
        valid = batch["valid"].bool()
        if self.weight == 0 or not bool(valid.any()):
            ref = out.logits.sum() * 0.0  # zero, attached to the graph (DDP sees every parameter used)
            return {"loss": total_loss(lm, ref, self.weight), "lm_loss": lm.detach(), "ref_loss": ref.detach()}
        anchor = pool(out.hidden_states[-1], batch["attention_mask"], self.pooling, batch.get("rationale_mask"))
        # Positives and negatives share one extra batched forward.
        pn_ids = torch.cat([batch["pos_input_ids"], batch["neg_input_ids"]])
        pn_mask = torch.cat([batch["pos_attention_mask"], batch["neg_attention_mask"]])
        hidden = _backbone(self.model)(input_ids=pn_ids, attention_mask=pn_mask).last_hidden_state
        pn_rationale = None
        if self.pooling == "mean":
            pn_rationale = torch.cat([batch["pos_rationale_mask"], batch["neg_rationale_mask"]])
        positive, negative = pool(hidden, pn_mask, self.pooling, pn_rationale).chunk(2)
        ref = reflection_loss(anchor, positive, negative, valid, self.margin)
        return {"loss": total_loss(lm, ref, self.weight), "lm_loss": lm.detach(), "ref_loss": ref.detach()}
