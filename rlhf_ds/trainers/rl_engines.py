"""The engines of the RL loop: which models it holds, and how they are prepared for on-policy updates.

Dropout is switched off in every model RL trains. Old log-probs and values are recorded in eval mode
(no dropout); if the update then ran with dropout, its first ratio pi/pi_old would be noise around 1,
not 1, and the clip would fire on data the policy generated itself (issue 14: ratio_max 1.28 with
LoRA dropout 0.05). OpenRLHF, TRL and verl disable dropout in the actor and critic for this reason.
"""
from __future__ import annotations

import torch
from torch import nn


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability inside `model` to 0, in place: the `nn.Dropout` modules (a model's
    own and peft's `lora_dropout`) and the float rates that attention layers read at forward time
    (Hugging Face's `self.attention_dropout`, used as `dropout=0.0 if not self.training else ...`).
    The model's config is left as it is, so an export keeps the rates it was given."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool):
                setattr(module, name, 0.0)
    return model


def no_dropout(factory):
    """`factory` (a model constructor for an engine) with dropout disabled in what it builds."""
    def build() -> torch.nn.Module:
        return disable_dropout(factory())
    return build
