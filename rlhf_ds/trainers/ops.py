"""The per-token math the trainers call, chosen once by `ppo.use_kernels`.

"auto": the `rlhf_kernels` functions (fused Triton kernels on CUDA, memory-efficient torch
paths elsewhere: no N x V temporary for log-probs or entropy); "reference": the plain torch
twins in `rlhf_ds.rl`, which materialise the full log-softmax. Both give the same losses
(tested), so the switch exists to rule the kernels out when debugging.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from .. import rl

LogprobResult = Tuple[torch.Tensor, Optional[torch.Tensor]]


@dataclass(frozen=True)
class TokenOps:
    # (logits (B,T,V), labels (B,T), temperature, with_entropy) -> (logprobs (B,T), entropy (B,T) | None)
    logprobs: Callable[..., LogprobResult]
    # (hidden (B,T,H), weight (V,H), labels (B,T), temperature, with_entropy) -> same, logits never whole
    linear_logprobs: Callable[..., LogprobResult]
    kl_shaped_rewards: Callable
    gae: Callable
    name: str


def _reference_logprobs(logits, labels, temperature=1.0, with_entropy=False) -> LogprobResult:
    lp = rl.gather_logprobs(logits, labels, temperature)
    return lp, rl.entropy_from_logits(logits, temperature) if with_entropy else None


def _reference_linear(hidden, weight, labels, temperature=1.0, with_entropy=False) -> LogprobResult:
    return _reference_logprobs(hidden @ weight.t(), labels, temperature, with_entropy)


def token_ops(use_kernels: str = "auto") -> TokenOps:
    if use_kernels not in ("auto", "reference"):
        raise ValueError(f"use_kernels must be auto or reference, got {use_kernels!r}")
    if use_kernels == "reference":
        return TokenOps(_reference_logprobs, _reference_linear, rl.kl_shaped_rewards, rl.gae, "reference")
    import rlhf_kernels as K

    def logprobs(logits, labels, temperature=1.0, with_entropy=False) -> LogprobResult:
        out = K.gather_logprobs(logits, labels, temperature, return_entropy=with_entropy)
        return out if with_entropy else (out, None)

    def linear(hidden, weight, labels, temperature=1.0, with_entropy=False) -> LogprobResult:
        out = K.fused_linear_logprobs(hidden, weight, labels, temperature, return_entropy=with_entropy)
        return out if with_entropy else (out, None)

    return TokenOps(logprobs, linear, K.kl_shaped_rewards, K.gae, "kernels")
