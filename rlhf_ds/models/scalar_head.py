"""Reward model and critic: a transformer backbone plus a linear head giving one scalar per token.

We hold a Hugging Face `AutoModelForSequenceClassification` with `num_labels=1`, so the
reward model exports with `save_pretrained` and loads back with that Auto class. We
run the backbone and the `score` head ourselves to get per-token values (the critic) and
read the reward at each row's last real token from the attention mask (HF's own pooling
looks for the pad id, which breaks when pad == EOS or a pad is unset; we export with a
distinct pad id so its pooling agrees with ours).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .positions import last_token_index, positions_from_mask


class ScalarHeadModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        base = getattr(model, "base_model_prefix", None)
        if not base or not hasattr(model, base) or not hasattr(model, "score"):
            raise TypeError(f"{type(model).__name__} is not a sequence-classification model with a `score` head "
                            f"over `{base}`; load it with AutoModelForSequenceClassification(num_labels=1)")

    @property
    def config(self):
        return self.model.config

    def new_parameters(self):
        """Parameters that were not in the checkpoint and must be initialised by us (see init_new_parameters)."""
        return [self.model.score.weight] if getattr(self.model, "rlhf_ds_new_head", False) else []

    @torch.no_grad()
    def init_new_parameters(self, seed: int) -> None:
        """A new score head drawn from N(0, 1/hidden) with a generator seeded by `seed`: the same values on
        any number of ranks, so a run's outcome does not depend on how it was sharded. Call with the
        full parameter (gathered under ZeRO-3)."""
        w = self.model.score.weight
        g = torch.Generator().manual_seed(seed)
        w.copy_(torch.randn(w.shape, generator=g) / w.shape[-1] ** 0.5)

    def _backbone(self):
        return getattr(self.model, self.model.base_model_prefix)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                num_values: Optional[int] = None):
        """
        Returns dict with:
            values `(B, T)` (or the `num_values` before the last position: the states from which
            the last `num_values` tokens were emitted, what a PPO critic needs),
            scores `(B,)` at each row's last real token.
        """
        hidden = self._hidden(input_ids, attention_mask)
        return self._outputs(self.model.score(hidden).squeeze(-1).float(), attention_mask, num_values)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's last hidden states `(B, T, H)`, positions counted from each row's first real token."""
        return self._backbone()(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=positions_from_mask(attention_mask),
                                use_cache=False).last_hidden_state

    @staticmethod
    def _outputs(values: torch.Tensor, attention_mask: torch.Tensor, num_values: Optional[int]):
        """forward's dict from per-token head outputs `values` `(B, T)`."""
        rows = torch.arange(values.shape[0], device=values.device)
        scores = values[rows, last_token_index(attention_mask)]
        if num_values is not None:
            values = values[:, -(num_values + 1):-1]
        return {"values": values, "scores": scores}
