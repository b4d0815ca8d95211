"""The per-token math the trainers call, chosen once by `ppo.use_kernels`.

"auto": the `rlhf_kernels` functions (fused Triton kernels on CUDA, memory-efficient torch
paths elsewhere); "reference": the plain torch twins in `rlhf_ds.rl`. Both give the same
losses (tested), so the switch exists to rule the kernels out when debugging.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import rl


@dataclass(frozen=True)
class TokenOps:
    gather_logprobs: Callable
    kl_shaped_rewards: Callable
    gae: Callable
    name: str


def token_ops(use_kernels: str = "auto") -> TokenOps:
    if use_kernels not in ("auto", "reference"):
        raise ValueError(f"use_kernels must be auto or reference, got {use_kernels!r}")
    if use_kernels == "reference":
        return TokenOps(rl.gather_logprobs, rl.kl_shaped_rewards, rl.gae, "reference")
    import rlhf_kernels as K

    return TokenOps(
        gather_logprobs=lambda logits, labels, temperature=1.0: K.gather_logprobs(logits, labels, temperature),
        kl_shaped_rewards=K.kl_shaped_rewards,
        gae=K.gae,
        name="kernels",
    )
