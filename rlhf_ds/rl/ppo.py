"""PPO clipped policy loss, with the optional dual clip.

Sources:
- Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7:
  L^CLIP = E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)], r_t = pi(a_t) / pi_old(a_t).
- Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep Reinforcement
  Learning" (dual-clip PPO): for A_t < 0 the objective is additionally bounded
  below by c * A_t (c > 1), so that a huge ratio on a bad action cannot produce an
  unbounded loss.
- J. Schulman, "Approximating KL Divergence" (2020): the k3 estimator for the logged
  approx_kl.
"""
from typing import Dict, Optional, Tuple

import torch

from ._checks import Count, check_same_shape
from .masked import masked_mean
from .reduction import token_mean

# exp(20) ~ 4.9e8 stays finite in fp32; an unbounded log-ratio overflows exp to inf
# and inf * 0 in the backward of the unselected min branch is NaN.
LOG_RATIO_CLAMP = 20.0


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    action_mask: torch.Tensor, clip_range: float = 0.2,
                    dual_clip: Optional[float] = None, num_tokens: Optional[Count] = None,
                    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Clipped surrogate loss -L^CLIP (Schulman et al. 2017, eq. 7), token-mean reduced.

    Per token: `loss_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_range, 1 + clip_range))`;
    with `dual_clip = c`, tokens with A_t < 0 use `min(loss_t, -c A_t)` (Ye et al. 2020).
    The loss is `sum(loss_t * mask) / num_tokens` (see `token_mean`).

    Args:
        logprobs: `(B, T)` log pi of the taken tokens under the current policy (with grad).
        old_logprobs: `(B, T)` log pi_old of the same tokens, from the rollout (constant).
        advantages: `(B, T)` advantage estimates (constant), e.g. from `gae`.
        action_mask: `(B, T)` 1 on the response tokens that count.
        clip_range: epsilon of the clip, > 0.
        dual_clip: c > 1 to enable the dual clip, None to disable it.
        num_tokens: global token count of the optimizer step; default `action_mask.sum()`.

    Returns:
        (loss, stats): `loss` a 0-d fp32 tensor. `stats` holds detached 0-d tensors,
        averaged over this call's masked tokens (a caller that splits a batch
        all-reduces them):
        - `clip_fraction`: share of tokens whose clipped term is the active one, i.e.
          whose gradient the clip removes;
        - `approx_kl`: k3 estimate of KL(pi_old || pi), mean of (r - 1) - log r;
        - `ratio_mean`, `ratio_max`: of r over the masked tokens (0 if there is none);
        - `dual_clip_fraction` (only with `dual_clip`): share of tokens where the dual
          bound -c A_t is the active one.
        With one PPO epoch and one minibatch r == 1 everywhere and the clip never acts.
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages,
                     action_mask=action_mask)
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (Ye et al. 2020) or None, got {dual_clip}")
    mask = action_mask.bool()
    # Sanitise padding before any nonlinearity: a where() after exp would still let
    # NaN/inf from padding into the gradients.
    log_ratio = torch.where(mask, logprobs.float() - old_logprobs.float().detach(), 0.0)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    adv = torch.where(mask, advantages.float().detach(), 0.0)
    ratio = torch.exp(log_ratio)

    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        dual_bound = -dual_clip * adv
        dual_active = (adv < 0) & (dual_bound < per_token)
        per_token = torch.where(adv < 0, torch.minimum(per_token, dual_bound), per_token)
    loss = token_mean(per_token, mask, num_tokens)

    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask, ratio, 0.0).max() if mask.numel() else ratio.new_zeros(()),
        }
        if dual_clip is not None:
            stats["dual_clip_fraction"] = masked_mean(dual_active.float(), mask)
    return loss, {k: v.detach() for k, v in stats.items()}
