"""Critic loss, optionally clipped around the rollout values, and explained variance.

Sources: the clipped value loss of OpenAI baselines PPO2 (`ppo2/model.py`; discussed
as "value function clipping" in Engstrom et al. 2020, "Implementation Matters in Deep
Policy Gradients: A Case Study on PPO and TRPO", section 3): V_clip = V_old + clip(V - V_old, -c, c),
L^V = max((V - R)^2, (V_clip - R)^2). The explained variance
1 - Var[R - V] / Var[R] is the diagnostic of baselines' `explained_variance`.
"""
from typing import Dict, Optional, Tuple

import torch

from ._checks import Count, check_same_shape
from .masked import masked_mean
from .reduction import token_mean


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               action_mask: torch.Tensor, value_clip: Optional[float] = None,
               num_tokens: Optional[Count] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Squared-error critic loss with the PPO2 clip, token-mean reduced.

    Convention: `loss = 0.5 * token_mean(max((V - R)^2, (V_clip - R)^2))`, the 0.5
    of baselines PPO2, so the gradient per token is (V - R) where unclipped. Without
    `value_clip` it is `0.5 * token_mean((V - R)^2)`.

    Args:
        values: `(B, T)` current critic values V(s_t) (with grad).
        old_values: `(B, T)` critic values recorded at rollout time (constant).
        returns: `(B, T)` value targets R_t (constant), e.g. from `gae`.
        action_mask: `(B, T)` 1 on the response tokens that count.
        value_clip: c > 0 to clip V within V_old +- c; None for the plain loss.
        num_tokens: global token count of the optimizer step; default `action_mask.sum()`.

    Returns:
        (loss, stats): `loss` a 0-d fp32 tensor; `stats` detached 0-d tensors over
        this call's masked tokens: `value_mean`, `value_error` (mean (V - R)^2,
        unclipped), `explained_variance`, and with `value_clip` the
        `value_clip_fraction` (share of tokens whose clipped error is the active one).
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, action_mask=action_mask)
    if value_clip is not None and not value_clip > 0:
        raise ValueError(f"value_clip must be > 0 or None, got {value_clip}")
    mask = action_mask.bool()
    # Sanitise padding before squaring: (nan)^2 under a later where() still gives
    # NaN gradients.
    v = torch.where(mask, values.float(), 0.0)
    target = torch.where(mask, returns.float().detach(), 0.0)
    error = (v - target).square()
    per_token = error
    if value_clip is not None:
        old = torch.where(mask, old_values.float().detach(), 0.0)
        v_clipped = old + (v - old).clamp(-value_clip, value_clip)
        clipped_error = (v_clipped - target).square()
        per_token = torch.maximum(error, clipped_error)
    loss = 0.5 * token_mean(per_token, mask, num_tokens)

    with torch.no_grad():
        stats = {
            "value_mean": masked_mean(v, mask),
            "value_error": masked_mean(error, mask),
            "explained_variance": explained_variance(v, target, mask),
        }
        if value_clip is not None:
            stats["value_clip_fraction"] = masked_mean((clipped_error > error).float(), mask)
    return loss, {k: t.detach() for k, t in stats.items()}


def explained_variance(values: torch.Tensor, returns: torch.Tensor,
                       action_mask: torch.Tensor) -> torch.Tensor:
    """`1 - Var[R - V] / Var[R]` over the masked tokens (OpenAI baselines `explained_variance`).

    1 is a perfect critic, 0 is no better than predicting the mean return, < 0 is
    worse than that. Population variances (the 1/n factors cancel).

    Args:
        values, returns, action_mask: `(B, T)`.

    Returns:
        0-d fp32 tensor; NaN when Var[R] is 0 (undefined, as in baselines), including
        when no token is selected. No host sync.
    """
    check_same_shape(values=values, returns=returns, action_mask=action_mask)
    mask = action_mask.bool()
    v, r = values.float(), returns.float()

    def var(x):
        centred = torch.where(mask, x - masked_mean(x, mask), 0.0)
        return masked_mean(centred.square(), mask)

    var_returns = var(r)
    ratio = var(r - v) / var_returns
    return torch.where(var_returns > 0, 1.0 - ratio, torch.full_like(ratio, float("nan")))
