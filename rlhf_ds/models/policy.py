"""The policy: a causal LM that returns log-probs of the tokens it is given.

The wrapper is what DeepSpeed holds, so everything a trainer needs happens inside one
`forward` (under ZeRO-3 the parameters are gathered by hooks around that call).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

from ..rl import entropy_from_logits, gather_logprobs
from .lora import adapters_disabled
from .positions import positions_from_mask

LogprobFn = Callable[..., torch.Tensor]


class PolicyModel(nn.Module):
    """Wraps a Hugging Face causal LM (`self.lm`, possibly a peft model).

    `forward` scores the last `num_scored` tokens of each row: logprobs[:, j] is
    log p(input_ids[:, T - num_scored + j] | everything before it). PPO scores the R
    response tokens (num_scored = R); SFT and DPO score all but the first (T - 1).
    """

    def __init__(self, lm: nn.Module, logprob_fn: Optional[LogprobFn] = None):
        super().__init__()
        self.lm = lm
        # Swappable so the fused kernels (or the plain reference) can be chosen by config.
        self.logprob_fn = logprob_fn or gather_logprobs

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_scored: Optional[int] = None,
                temperature: float = 1.0, with_entropy: bool = False, return_logits: bool = False,
                disable_adapters: bool = False):
        """
        Args:
            input_ids, attention_mask: `(B, T)`; any padding side.
            num_scored: how many trailing tokens to score (default T - 1).
            temperature: divide logits by this before the softmax (match the sampling temperature).
            disable_adapters: run the LoRA base alone (the reference policy when the base is frozen);
                inside forward, so that under ZeRO-3 the engine's hooks gather what the base needs.
        Returns:
            dict with `logprobs` `(B, num_scored)` fp32, and `entropy` `(B, num_scored)` /
            `logits` `(B, num_scored, V)` when asked.
        """
        t = input_ids.shape[1]
        k = t - 1 if num_scored is None else int(num_scored)
        if not 0 < k < t:
            raise ValueError(f"num_scored must be in [1, {t - 1}] for sequences of length {t}, got {k}")
        with adapters_disabled(self.lm) if disable_adapters else contextlib.nullcontext():
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=positions_from_mask(attention_mask), use_cache=False,
                          logits_to_keep=k + 1)
        logits = out.logits[:, :-1]          # (B, k, V): position i predicts token i + 1
        targets = input_ids[:, t - k:]       # (B, k)
        result = {"logprobs": self.logprob_fn(logits, targets, temperature)}
        if with_entropy:
            result["entropy"] = entropy_from_logits(logits.float() / temperature)
        if return_logits:
            result["logits"] = logits
        return result
