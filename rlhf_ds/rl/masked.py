"""Reductions over the entries selected by a mask.

Masks are read as booleans (nonzero = counts). Masked-out entries are excluded with
`torch.where`, not multiplied by 0: padding may hold inf or NaN, and `0 * inf` is NaN.
Sums run in at least fp32 so bf16 activations do not lose the small terms.
"""
from typing import Optional

import torch

from ._checks import check_same_shape


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Sum of `x` where `mask` is nonzero.

    Args:
        x: `(B, T)` (any shape) values.
        mask: same shape as `x`.
        dim: reduce this dimension only; None reduces everything to a 0-d tensor.

    Returns:
        0-d tensor, or `x` without `dim`; fp32 (fp64 if `x` is fp64).
    """
    check_same_shape(x=x, mask=mask)
    x = x.to(_accumulation_dtype(x))
    kept = torch.where(mask.bool(), x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of `x` over the entries where `mask` is nonzero.

    An empty selection (a whole batch, or one row with `dim`) gives 0 rather than NaN,
    so one empty response cannot poison a batch statistic.

    Args:
        x: `(B, T)` (any shape) values.
        mask: same shape as `x`.
        dim: reduce this dimension only; None reduces everything.

    Returns:
        0-d tensor, or `x` without `dim`; fp32 (fp64 if `x` is fp64).

    Example (mean entropy of the response tokens)::

        masked_mean(entropy_from_logits(logits), action_mask)
    """
    total = masked_sum(x, mask, dim)
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim=dim)
    return total / count.clamp(min=1).to(total.dtype)


def _masked_count(mask: torch.Tensor) -> int:
    return int(mask.bool().sum().item())


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the entries where `mask` is nonzero.

    Two-pass (mean first, then squared deviations), which is stable where the
    one-pass E[x^2] - E[x]^2 cancels catastrophically.

    Args:
        x: `(B, T)` (any shape) values.
        mask: same shape as `x`.
        unbiased: divide by n - 1 (Bessel's correction) instead of n.

    Returns:
        0-d tensor, fp32 (fp64 if `x` is fp64).

    Raises:
        ValueError: fewer than 2 selected entries (1 when `unbiased` is False); this
        check reads the count on the host (one sync), acceptable for a statistic
        taken once per batch.
    """
    return _masked_mean_var(x, mask, unbiased)[1]


def _masked_mean_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool):
    """(mean, variance) over the masked entries, as masked_mean and masked_var define them."""
    check_same_shape(x=x, mask=mask)
    n = _masked_count(mask)
    needed = 2 if unbiased else 1
    if n < needed:
        raise ValueError(f"masked_var needs at least {needed} masked entries "
                         f"(unbiased={unbiased}), got {n}")
    mean = masked_mean(x, mask)
    deviation = x.to(mean.dtype) - mean
    return mean, masked_sum(deviation.square(), mask) / (n - 1 if unbiased else n)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalise `x` to zero mean and unit variance over the masked entries.

    This is the advantage normalisation of PPO implementations (OpenAI baselines
    PPO2; Ziegler et al. 2019, lm-human-preferences), restricted to the response
    tokens so that padding does not shift the statistics.

    Args:
        x: `(B, T)` (any shape) values, e.g. advantages.
        mask: same shape as `x`.
        shift_mean: if False, only rescale: the result keeps the mean of `x`
            (useful for rewards, whose sign carries meaning).
        eps: added to the (unbiased) variance before the square root.

    Returns:
        Same shape as `x`, fp32 (fp64 if `x` is fp64); exactly 0 where `mask` is 0.
    """
    mean, var = _masked_mean_var(x, mask, unbiased=True)
    whitened = (x.to(mean.dtype) - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))
