"""Per-token KL estimators and KL-shaped rewards.

Source: J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html.
With samples x ~ pi and log r = log pi(x) - log pi_ref(x):
    k1 = log r                  unbiased, high variance, can be negative
    k2 = (log r)^2 / 2          biased, low variance, >= 0
    k3 = (e^{-log r} - 1) + log r   unbiased, low variance, >= 0
KL-shaped rewards follow Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
Preferences", eq. 2) and Ouyang et al. 2022: r_t = -beta * KL_t, plus the sequence
score at the last response token.
"""
import torch

from ._checks import check_ndim, check_same_shape

KL_ESTIMATORS = ("k1", "k2", "k3")
# exp(20) ~ 4.9e8 is finite in fp32; beyond it k3 would overflow to inf.
K3_LOG_RATIO_CLAMP = 20.0


def _check_estimator(estimator: str) -> None:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {', '.join(KL_ESTIMATORS)}")


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, action_mask: torch.Tensor,
                 estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate on response tokens.

    Args:
        logprobs: `(B, T)` log pi of the sampled tokens.
        ref_logprobs: `(B, T)` log pi_ref of the same tokens.
        action_mask: `(B, T)` 1 where the token counts, 0 elsewhere.
        estimator: "k1", "k2" or "k3" (see module docstring); k3 clamps log r to +-20.

    Returns:
        `(B, T)` fp32, exactly 0 where `action_mask` is 0.
    """
    _check_estimator(estimator)
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, action_mask=action_mask)
    mask = action_mask.bool()
    # Zero the log-ratio on masked positions before the estimator: padding may hold
    # -inf or garbage, and k2/k3 of it would turn into NaN gradients even under the
    # final where (0 * inf = NaN in the backward pass). Every estimator maps 0 to 0.
    log_ratio = torch.where(mask, logprobs.float() - ref_logprobs.float(), 0.0)
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio.square()
    else:
        log_ratio = log_ratio.clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
        kl = torch.expm1(-log_ratio) + log_ratio
    return torch.where(mask, kl, torch.zeros_like(kl))


def last_action_index(action_mask: torch.Tensor) -> torch.Tensor:
    """`(B,)` index of the last 1 in each row of `action_mask` `(B, T)`; -1 for empty rows."""
    check_ndim("action_mask", action_mask, 2, "(B, T)")
    t = action_mask.shape[-1]
    if t == 0:  # amax over an empty dimension raises
        return torch.full(action_mask.shape[:1], -1, dtype=torch.long, device=action_mask.device)
    positions = torch.arange(t, device=action_mask.device).expand_as(action_mask)
    return torch.where(action_mask.bool(), positions, torch.full_like(positions, -1)).amax(dim=-1)


def kl_shaped_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      action_mask: torch.Tensor, kl_coef: float, estimator: str = "k1"):
    """Per-token rewards: -kl_coef * KL_t on response tokens, plus the score at the last one.

    Args:
        scores: `(B,)` sequence-level reward-model scores.
        logprobs, ref_logprobs, action_mask: `(B, T)` as in `per_token_kl`.
        kl_coef: beta, the KL penalty coefficient.

    Returns:
        (rewards, kl): both `(B, T)` fp32, 0 where `action_mask` is 0. A row with no
        response token gets no score (there is no token to credit it to).
    """
    kl = per_token_kl(logprobs, ref_logprobs, action_mask, estimator)
    if tuple(scores.shape) != tuple(action_mask.shape[:1]):
        raise ValueError(f"scores must be (B,) = {tuple(action_mask.shape[:1])}, "
                         f"got {tuple(scores.shape)}")
    rewards = -float(kl_coef) * kl
    last = last_action_index(action_mask)
    has_action = last >= 0
    rows = torch.arange(scores.shape[0], device=scores.device)[has_action]
    rewards[rows, last[has_action]] += scores.float()[has_action]
    return rewards, kl
