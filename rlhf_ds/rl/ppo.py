"""The clipped policy loss of PPO and of the critic-free family, with its options.

Sources:
- Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7:
  L^CLIP = E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)], r_t = pi(a_t) / pi_old(a_t).
- Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep Reinforcement
  Learning" (dual-clip PPO): for A_t < 0 the objective is additionally bounded
  below by c * A_t (c > 1), so that a huge ratio on a bad action cannot produce an
  unbounded loss.
- Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", section 3.1
  (clip-higher): separate bounds, clip(r, 1 - eps_low, 1 + eps_high) with eps_high > eps_low, so
  that unlikely tokens with positive advantage can still gain probability.
- Zheng et al. 2025, "Group Sequence Policy Optimization" (GSPO), eq. 7 and the GSPO-token form
  (eq. 13): one importance ratio per sequence, the geometric mean of its token ratios,
  s_i = exp(mean_t log r_it); on each token it enters as sg[s_i] * pi(a_t) / sg[pi(a_t)], whose
  gradient is GSPO's when the advantage is per sequence.
- J. Schulman, "Approximating KL Divergence" (2020): the k3 estimator for the logged
  approx_kl.
The reduction over tokens is `reduction.aggregate_loss` (token mean, or DAPO's / Dr. GRPO's forms).
"""
from typing import Dict, Optional, Tuple

import torch

from ._checks import Count, check_same_shape
from .masked import masked_mean
from .reduction import LOSS_AGGREGATIONS, aggregate_loss

IMPORTANCE_RATIOS = ("token", "sequence")

# exp(20) ~ 4.9e8 stays finite in fp32; an unbounded log-ratio overflows exp to inf
# and inf * 0 in the backward of the unselected min branch is NaN.
LOG_RATIO_CLAMP = 20.0


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    action_mask: torch.Tensor, clip_range: float = 0.2,
                    dual_clip: Optional[float] = None, num_tokens: Optional[Count] = None, *,
                    clip_range_low: Optional[float] = None, clip_range_high: Optional[float] = None,
                    ratio: str = "token", aggregation: str = "token_mean",
                    num_sequences: Optional[Count] = None, max_length: Optional[int] = None,
                    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Clipped surrogate loss -L^CLIP (Schulman et al. 2017, eq. 7) with its options.

    Per token: `loss_t = max(-A_t r_t, -A_t clip(r_t, 1 - eps_low, 1 + eps_high))`, where
    eps_low / eps_high are `clip_range_low` / `clip_range_high` (each defaults to `clip_range`;
    DAPO's clip-higher sets eps_high > eps_low); with `dual_clip = c`, tokens with A_t < 0 use
    `min(loss_t, -c A_t)` (Ye et al. 2020). With `ratio="sequence"` r_t is the sequence's GSPO
    ratio s_i on each of its tokens (Zheng et al. 2025). The loss reduces `loss_t` with
    `aggregate_loss(aggregation)`: by default `sum(loss_t * mask) / num_tokens` (see `token_mean`).

    Args:
        logprobs: `(B, T)` log pi of the taken tokens under the current policy (with grad).
        old_logprobs: `(B, T)` log pi_old of the same tokens, from the rollout (constant).
        advantages: `(B, T)` advantage estimates (constant), e.g. from `gae`.
        action_mask: `(B, T)` 1 on the response tokens that count.
        clip_range: epsilon of the clip, > 0 (both sides unless given separately).
        dual_clip: c > 1 to enable the dual clip, None to disable it.
        num_tokens: global token count of the optimizer step; default `action_mask.sum()`.
        clip_range_low, clip_range_high: the two sides of the clip, > 0; None: `clip_range`.
        ratio: "token" (PPO) or "sequence" (GSPO).
        aggregation, num_sequences, max_length: see `aggregate_loss`.

    Returns:
        (loss, stats): `loss` a 0-d fp32 tensor. `stats` holds detached 0-d tensors,
        averaged over this call's masked tokens (a caller that splits a batch
        all-reduces them):
        - `clip_fraction`: share of tokens whose clipped term is the active one, i.e.
          whose gradient the clip removes; `clip_fraction_low` (A < 0, r below 1 - eps_low) and
          `clip_fraction_high` (A > 0, r above 1 + eps_high) are its two parts;
        - `approx_kl`: k3 estimate of KL(pi_old || pi), mean of (r - 1) - log r;
        - `ratio_mean`, `ratio_max`: of r over the masked tokens (0 if there is none);
        - `dual_clip_fraction` (only with `dual_clip`): share of tokens where the dual
          bound -c A_t is the active one.
        With one PPO epoch and one minibatch r == 1 everywhere and the clip never acts.
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages,
                     action_mask=action_mask)
    low = clip_range if clip_range_low is None else clip_range_low
    high = clip_range if clip_range_high is None else clip_range_high
    for name, eps in (("clip_range", clip_range), ("clip_range_low", low), ("clip_range_high", high)):
        if not eps > 0:
            raise ValueError(f"{name} must be > 0, got {eps}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (Ye et al. 2020) or None, got {dual_clip}")
    if ratio not in IMPORTANCE_RATIOS:
        raise ValueError(f"unknown importance ratio {ratio!r}; allowed: {', '.join(IMPORTANCE_RATIOS)}")
    if aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; allowed: {', '.join(LOSS_AGGREGATIONS)}")
    mask = action_mask.bool()
    # Sanitise padding before any nonlinearity: a where() after exp would still let
    # NaN/inf from padding into the gradients.
    log_ratio = torch.where(mask, logprobs.float() - old_logprobs.float().detach(), 0.0)
    if ratio == "sequence":
        # GSPO-token: the value is the sequence's mean log-ratio, the gradient each token's own.
        seq = masked_mean(log_ratio.detach(), mask, dim=1).unsqueeze(1)
        log_ratio = torch.where(mask, seq + log_ratio - log_ratio.detach(), 0.0)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    adv = torch.where(mask, advantages.float().detach(), 0.0)
    ratio_t = torch.exp(log_ratio)

    unclipped = -adv * ratio_t
    clipped = -adv * ratio_t.clamp(1.0 - low, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        dual_bound = -dual_clip * adv
        dual_active = (adv < 0) & (dual_bound < per_token)
        per_token = torch.where(adv < 0, torch.minimum(per_token, dual_bound), per_token)
    loss = aggregate_loss(per_token, mask, aggregation, num_tokens, num_sequences, max_length)

    with torch.no_grad():
        clip_active = clipped > unclipped
        stats = {
            "clip_fraction": masked_mean(clip_active.float(), mask),
            "clip_fraction_low": masked_mean((clip_active & (adv < 0)).float(), mask),
            "clip_fraction_high": masked_mean((clip_active & (adv > 0)).float(), mask),
            "approx_kl": masked_mean(ratio_t - 1.0 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio_t, mask),
            "ratio_max": torch.where(mask, ratio_t, 0.0).max() if mask.numel() else ratio_t.new_zeros(()),
        }
        if dual_clip is not None:
            stats["dual_clip_fraction"] = masked_mean(dual_active.float(), mask)
    return loss, {k: v.detach() for k, v in stats.items()}
