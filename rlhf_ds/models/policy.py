"""The policy: a causal LM that returns log-probs of the tokens it is given.

The wrapper is what DeepSpeed holds, so everything a trainer needs happens inside one
`forward` (under ZeRO-3 the parameters are gathered by hooks around that call).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from .head_postprocessing import fused_head_multiplier
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
            chunks (`ops.linear_logprobs`), so the (B, T, V) logits never exist. A constant logit
            scale of the model is folded into the temperature; soft-capped logits are refused
            (head_postprocessing.py).
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
            self.logit_multiplier = fused_head_multiplier(unwrap(lm).config)

    @property
    def config(self):
        return self.lm.config

    def external_parameters(self) -> List[nn.Parameter]:
        """Parameters used outside their own module's forward: the LM-head weight on the fused path.
        The engine registers them so ZeRO-3 gathers them for this module's forward and backward."""
        return [unwrap(self.lm).get_output_embeddings().weight] if self.fused_head else []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_scored: Optional[int] = None,
                temperature: float = 1.0, with_entropy: bool = False, return_logits: bool = False,
                disable_adapters: bool = False, min_new_tokens: int = 0, eos_token_id: Optional[int] = None):
        """
        Args:
            input_ids, attention_mask: `(B, T)`; any padding side.
            num_scored: how many trailing tokens to score (default T - 1).
            temperature: divide logits by this before the softmax (match the sampling temperature).
            disable_adapters: run the frozen base without its LoRA adapters (the reference policy
                for free, see rlhf_ds.models.lora).
            min_new_tokens, eos_token_id: score sampled responses (num_scored = R) as they were
                sampled under `generation.min_new_tokens`: EOS has no probability at the first
                `min_new_tokens` scored positions, so the other tokens' log-probs (and the entropy)
                there are those of the distribution without EOS (see `suppress_eos`).
        Returns:
            dict with `logprobs` `(B, num_scored)` fp32, and `entropy` `(B, num_scored)` /
            `logits` `(B, num_scored, V)` (as the model gives them) when asked.
        """
        if disable_adapters:
            from .lora import adapters_disabled
            with adapters_disabled(self.lm):
                return self.forward(input_ids, attention_mask, num_scored, temperature, with_entropy, return_logits,
                                    min_new_tokens=min_new_tokens, eos_token_id=eos_token_id)
        t = input_ids.shape[1]
        k = t - 1 if num_scored is None else int(num_scored)
        if not 0 < k < t:
            raise ValueError(f"num_scored must be in [1, {t - 1}] for sequences of length {t}, got {k}")
        m = min(int(min_new_tokens), k)
        if m > 0 and eos_token_id is None:
            raise ValueError("min_new_tokens > 0 needs the eos_token_id it keeps from being sampled")
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
            temp = temperature / self.logit_multiplier   # softmax(s * z / T) = softmax(z / (T / s))
            parts = []
            if m > 0:   # few positions: their logits are materialised to take EOS out
                logits = suppress_eos(hidden[:, :m] @ weight.t(), targets[:, :m], eos_token_id)
                parts.append(self.ops.logprobs(logits, targets[:, :m], temp, with_entropy))
            if m < k:
                parts.append(self.ops.linear_logprobs(hidden[:, m:], weight, targets[:, m:], temp, with_entropy))
            return _joined(parts, with_entropy)
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                      logits_to_keep=k + 1)
        logits = out.logits[:, :-1]                                      # (B, k, V): i predicts i + 1
        parts = []
        if m > 0:
            parts.append(self.ops.logprobs(suppress_eos(logits[:, :m], targets[:, :m], eos_token_id),
                                           targets[:, :m], temperature, with_entropy))
        if m < k:
            parts.append(self.ops.logprobs(logits[:, m:], targets[:, m:], temperature, with_entropy))
        result = _joined(parts, with_entropy)
        if return_logits:
            result["logits"] = logits
        return result


def suppress_eos(logits: torch.Tensor, targets: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """`(B, m, V)` logits with EOS at -inf, as transformers' MinNewTokensLengthLogitsProcessor sets
    them before sampling the first `min_new_tokens` tokens (a new tensor; `logits` is untouched).

    A position whose target IS EOS cannot have been sampled that way; it keeps its EOS logit, so its
    log-prob stays finite (-inf there would turn a masked-out position into NaN in a masked sum)."""
    out = logits.clone()
    eos = logits[..., eos_token_id]
    out[..., eos_token_id] = torch.where(targets == eos_token_id, eos, torch.full_like(eos, float("-inf")))
    return out


def _joined(parts, with_entropy: bool) -> dict:
    """Concatenate (logprobs, entropy) pairs of consecutive position ranges into the forward's dict."""
    result = {"logprobs": torch.cat([lp for lp, _ in parts], dim=1) if len(parts) > 1 else parts[0][0]}
    if with_entropy:
        result["entropy"] = torch.cat([e for _, e in parts], dim=1) if len(parts) > 1 else parts[0][1]
    return result
