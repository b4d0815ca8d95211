"""The policy: a causal LM that returns log-probs of the tokens it is given.

The wrapper is what DeepSpeed holds, so everything a trainer needs happens inside one
`forward` (under ZeRO-3 the parameters are gathered by hooks around that call).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from .positions import positions_from_mask


def unwrap(lm: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (or `lm` itself)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


class PolicyModel(nn.Module):
    """Wraps a Hugging Face causal LM (`self.lm`, possibly a peft model).

    `forward` scores the last `num_scored` tokens of each row: logprobs[:, j] is
    log p(input_ids[:, T - num_scored + j] | everything before it). PPO scores the R
    response tokens (num_scored = R); SFT and DPO score all but the first (T - 1).

    Args:
        ops: a `TokenOps` (rlhf_ds.trainers.ops): the log-prob functions to use.
        fused_head: compute log-probs from the final hidden states and the LM-head weight in
            chunks (`ops.linear_logprobs`), so the (B, T, V) logits never exist.
    """

    def __init__(self, lm: nn.Module, ops=None, fused_head: bool = False):
        super().__init__()
        self.lm = lm
        if ops is None:
            from ..trainers.ops import token_ops
            ops = token_ops("reference")
        self.ops = ops
        self.fused_head = fused_head
        if fused_head:
            head = unwrap(lm).get_output_embeddings()
            if head is None or getattr(head, "bias", None) is not None:
                raise ValueError(f"model.fused_lm_head needs a bias-free linear LM head; "
                                 f"{type(unwrap(lm)).__name__} has {type(head).__name__}")

    @property
    def config(self):
        return self.lm.config

    def external_parameters(self) -> List[nn.Parameter]:
        """Parameters used outside their own module's forward: the LM-head weight on the fused path.
        The engine registers them so ZeRO-3 gathers them for this module's forward and backward."""
        return [unwrap(self.lm).get_output_embeddings().weight] if self.fused_head else []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_scored: Optional[int] = None,
                temperature: float = 1.0, with_entropy: bool = False, return_logits: bool = False,
                disable_adapters: bool = False):
        """
        Args:
            input_ids, attention_mask: `(B, T)`; any padding side.
            num_scored: how many trailing tokens to score (default T - 1).
            temperature: divide logits by this before the softmax (match the sampling temperature).
            disable_adapters: run the frozen base without its LoRA adapters (the reference policy
                for free, see rlhf_ds.models.lora).
        Returns:
            dict with `logprobs` `(B, num_scored)` fp32, and `entropy` `(B, num_scored)` /
            `logits` `(B, num_scored, V)` when asked.
        """
        if disable_adapters:
            from .lora import adapters_disabled
            with adapters_disabled(self.lm):
                return self.forward(input_ids, attention_mask, num_scored, temperature, with_entropy, return_logits)
        t = input_ids.shape[1]
        k = t - 1 if num_scored is None else int(num_scored)
        if not 0 < k < t:
            raise ValueError(f"num_scored must be in [1, {t - 1}] for sequences of length {t}, got {k}")
        targets = input_ids[:, t - k:]                                   # (B, k)
        positions = positions_from_mask(attention_mask)
        if self.fused_head:
            if return_logits:
                raise ValueError("return_logits is not available with model.fused_lm_head")
            hf = unwrap(self.lm)
            decoder = getattr(hf, hf.base_model_prefix)
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                             use_cache=False).last_hidden_state[:, t - k - 1:t - 1]   # (B, k, H)
            weight = hf.get_output_embeddings().weight
            logprobs, entropy = self.ops.linear_logprobs(hidden, weight, targets, temperature, with_entropy)
            return {"logprobs": logprobs, **({"entropy": entropy} if with_entropy else {})}
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                      logits_to_keep=k + 1)
        logits = out.logits[:, :-1]                                      # (B, k, V): i predicts i + 1
        logprobs, entropy = self.ops.logprobs(logits, targets, temperature, with_entropy)
        result = {"logprobs": logprobs}
        if with_entropy:
            result["entropy"] = entropy
        if return_logits:
            result["logits"] = logits
        return result
