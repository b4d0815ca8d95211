"""Advantage estimators, chosen by name from one registry; every one has the same signature.

    advantages, returns = ADVANTAGE_ESTIMATORS["grpo"].fn(rewards, action_mask, values=None, group_size=8)

Inputs, for every estimator:
    rewards      `(B, T)` per-token rewards: the sequence score at each row's last response token,
                 plus -beta * KL_t on every token when the KL term is in the reward (`kl_shaped_rewards`).
    action_mask  `(B, T)` 1 on response tokens that count; holes and trailing padding allowed.
    values       `(B, T)` critic values, or None (only `gae` reads them).
    group_size   G: rows g*G .. g*G + G - 1 are G samples of one prompt (the group estimators read it).
    gamma, lam   discount and GAE lambda (`gae`, `reinforce_pp*`; the group estimators are outcome
                 methods: one return per sequence, undiscounted).
    whiten       the batch whitening `(x, mask) -> x'` used by the methods that whiten: `masked_whiten`
                 over this batch by default; the RL loop passes one that reduces over all ranks, so the
                 result does not depend on how the batch was split.
    scan         the GAE recurrence `(rewards, values, mask, gamma, lam) -> (adv, returns)`: `rl.gae` by
                 default, or its fast twin `rlhf_kernels.gae` (the same function, tested equal).
Output: `(advantages, returns)`, both `(B, T)` fp32 and 0 where the mask is 0; `returns` (the value
targets) is None for the estimators that need no critic.

A group estimator's sequence return is the sum of the row's token rewards (the score minus the
summed KL penalty when the KL is in the reward): R_i = sum_t r_it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from . import group_advantages
from ._checks import check_ndim, check_same_shape
from .gae import gae as gae_scan
from .kl import last_action_index
from .masked import masked_whiten

Advantages = Tuple[torch.Tensor, Optional[torch.Tensor]]
Whiten = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _checked(rewards: torch.Tensor, action_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    check_same_shape(rewards=rewards, action_mask=action_mask)
    check_ndim("rewards", rewards, 2, "(B, T)")
    return rewards.float(), action_mask.bool()


def _groups(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """`(B,)` sequence returns as `(B / G, G)`, groups contiguous."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if returns.shape[0] % group_size:
        raise ValueError(f"batch size B={returns.shape[0]} is not divisible by group_size G={group_size}: "
                         f"B must be n_groups * G, each prompt's G samples contiguous")
    return returns.view(-1, group_size)


def _per_token(per_sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(B,)` -> `(B, T)`: the sequence's value on each of its counted tokens, 0 elsewhere."""
    return torch.where(mask, per_sequence.unsqueeze(1), torch.zeros((), dtype=per_sequence.dtype))


def sequence_returns(rewards: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """`(B,)` R_i = sum over the row's counted tokens of r_it."""
    rewards, mask = _checked(rewards, action_mask)
    return torch.where(mask, rewards, 0.0).sum(dim=1)


def gae_estimate(rewards, action_mask, values=None, *, group_size: int = 1, gamma: float = 1.0,
                 lam: float = 0.95, whiten: Optional[Whiten] = masked_whiten, scan=gae_scan) -> Advantages:
    """PPO's estimator: GAE with a critic, then whitened over the batch.

    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, returns A_t + V_t
    (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation", eq. 16); the advantages (not the returns) are then whitened over the batch, as PPO
    implementations do (OpenAI baselines ppo2; Ziegler et al. 2019). `whiten=None` skips it.
    """
    if values is None:
        raise ValueError("the gae estimator needs critic values")
    rewards, mask = _checked(rewards, action_mask)
    advantages, returns = scan(rewards, values.float(), mask, gamma, lam)
    if whiten is not None:
        advantages = whiten(advantages, mask)
    return advantages, returns


def grpo_estimate(rewards, action_mask, values=None, *, group_size: int = 1, gamma: float = 1.0,
                  lam: float = 1.0, whiten: Optional[Whiten] = None, scan=gae_scan) -> Advantages:
    """GRPO: A_i = (R_i - mean_g(R)) / (std_g(R) + eps) on every token of sample i.

    Shao et al. 2024, "DeepSeekMath", section 4.1.2 (outcome supervision), std with Bessel's
    correction (n - 1) and eps = 1e-6 (`rl.grpo_advantages`), as in TRL's and verl's GRPO. A group
    whose returns are all equal, and a group of one (no baseline), give 0: nothing to learn from them.
    """
    return _group_centred(rewards, action_mask, group_size, scale_by_std=True)


def dr_grpo_estimate(rewards, action_mask, values=None, *, group_size: int = 1, gamma: float = 1.0,
                     lam: float = 1.0, whiten: Optional[Whiten] = None, scan=gae_scan) -> Advantages:
    """Dr. GRPO: A_i = R_i - mean_g(R), without GRPO's division by the group's std.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", section 3.2: the
    std division weights prompts that are too easy or too hard more. (Their other change, a constant
    loss divisor, is the `seq_mean_token_sum_norm` loss aggregation.)
    """
    return _group_centred(rewards, action_mask, group_size, scale_by_std=False)


def _group_centred(rewards, action_mask, group_size: int, scale_by_std: bool) -> Advantages:
    rewards, mask = _checked(rewards, action_mask)
    returns = sequence_returns(rewards, mask)
    _groups(returns, group_size)
    if group_size == 1:                    # no baseline: R - mean(R) = 0 (and a std of one sample is undefined)
        return torch.zeros_like(rewards), None
    return _per_token(group_advantages.grpo_advantages(returns, group_size, scale_by_std=scale_by_std), mask), None


def rloo_estimate(rewards, action_mask, values=None, *, group_size: int = 1, gamma: float = 1.0,
                  lam: float = 1.0, whiten: Optional[Whiten] = None, scan=gae_scan) -> Advantages:
    """RLOO: A_i = R_i - 1/(G-1) sum_{j != i} R_j, the leave-one-out baseline.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
    Human Feedback in LLMs", eq. 9 (after Kool et al. 2019): each sample's baseline is the mean of
    the other samples of its prompt, so it does not depend on the sample and the estimate stays
    unbiased (`rl.rloo_advantages`). Needs G >= 2.
    """
    rewards, mask = _checked(rewards, action_mask)
    return _per_token(group_advantages.rloo_advantages(sequence_returns(rewards, mask), group_size), mask), None


def reinforce_pp_estimate(rewards, action_mask, values=None, *, group_size: int = 1, gamma: float = 1.0,
                          lam: float = 1.0, whiten: Optional[Whiten] = masked_whiten, scan=gae_scan
                          ) -> Advantages:
    """REINFORCE++: discounted returns G_t = sum_{k >= t} gamma^(k-t) r_k, whitened over the batch.

    Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    section 3 (token-level KL in the reward, then returns normalised over the global batch). The
    returns are GAE with V = 0 and lambda = 1, so the same scan computes them. `whiten=None` skips
    the normalisation.
    """
    rewards, mask = _checked(rewards, action_mask)
    returns, _ = scan(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    if whiten is not None:
        returns = whiten(returns, mask)
    return returns, None


def reinforce_pp_baseline_estimate(rewards, action_mask, values=None, *, group_size: int = 1,
                                   gamma: float = 1.0, lam: float = 1.0,
                                   whiten: Optional[Whiten] = masked_whiten, scan=gae_scan) -> Advantages:
    """REINFORCE++ with a group baseline: the group mean of the sequence returns, mean_g(R), is taken
    off each row's last-token reward, then REINFORCE++ (discounted returns, batch whitening).

    Hu 2025 (REINFORCE++-baseline, the variant for several samples per prompt; OpenRLHF's
    `reinforce_baseline`): the group mean removes the prompt's difficulty, the batch whitening
    the scale. With gamma = 1 every token's return is lowered by exactly mean_g(R).
    """
    rewards, mask = _checked(rewards, action_mask)
    grouped = _groups(sequence_returns(rewards, mask), group_size)
    baseline = grouped.mean(dim=1, keepdim=True).expand_as(grouped).reshape(-1)
    last = last_action_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(1)
    shifted = rewards.clone()
    shifted[rows, last[rows]] -= baseline[rows]
    return reinforce_pp_estimate(shifted, mask, None, group_size=group_size, gamma=gamma, whiten=whiten,
                                   scan=scan)


@dataclass(frozen=True)
class AdvantageEstimator:
    name: str
    fn: Callable[..., Advantages]
    needs_critic: bool       # reads `values` and returns value targets: the loop builds a critic
    uses_groups: bool        # compares the samples of one prompt: needs several per prompt
    min_group_size: int = 1


ADVANTAGE_ESTIMATORS: Dict[str, AdvantageEstimator] = {e.name: e for e in (
    AdvantageEstimator("gae", gae_estimate, needs_critic=True, uses_groups=False),
    AdvantageEstimator("grpo", grpo_estimate, needs_critic=False, uses_groups=True),
    AdvantageEstimator("dr_grpo", dr_grpo_estimate, needs_critic=False, uses_groups=True),
    AdvantageEstimator("rloo", rloo_estimate, needs_critic=False, uses_groups=True, min_group_size=2),
    AdvantageEstimator("reinforce_pp", reinforce_pp_estimate, needs_critic=False, uses_groups=False),
    AdvantageEstimator("reinforce_pp_baseline", reinforce_pp_baseline_estimate, needs_critic=False,
                       uses_groups=True),
)}


def advantage_estimator(name: str) -> AdvantageEstimator:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; allowed: {', '.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name]
