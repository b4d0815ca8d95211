"""Running mean and variance of a stream of values (e.g. rewards, for normalisation).

Source: the pairwise update of Chan, Golub & LeVeque 1979 ("Updating formulae and a
pairwise algorithm for computing sample variances"), which generalises Welford 1962
from one value to a whole batch. Two summaries (n_a, mean_a, M2_a) and
(n_b, mean_b, M2_b), M2 = sum of squared deviations from the mean, combine as
    delta = mean_b - mean_a,  n = n_a + n_b,
    mean  = mean_a + delta * n_b / n,
    M2    = M2_a + M2_b + delta^2 * n_a * n_b / n,
exactly (no E[x^2] - E[x]^2 cancellation). State is kept in python floats (fp64).

Distributed use (the caller all-reduces; nothing here knows about ranks): either
gather the batch from every rank and call `update(batch)`, or compute
`batch_moments(x)` on each rank, gather the triples and `update_from_moments` each
of them (or pre-combine them with `combine_moments`). Every rank then holds the same
state.
"""
import math
from typing import Dict, Optional, Tuple

import torch

Moments = Tuple[float, float, float]  # (count, mean, M2)


def combine_moments(a: Moments, b: Moments) -> Moments:
    """Chan et al. 1979 pairwise combination of two (count, mean, M2) summaries."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    if n_b == 0:
        return a
    if n_a == 0:
        return b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


def batch_moments(x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Moments:
    """(count, mean, M2) of the entries of `x` (where `mask` is nonzero), computed in fp64.

    Args:
        x: any shape, e.g. `(B,)` scores.
        mask: optional, same shape as `x`.
    """
    values = x.detach().double().reshape(-1)
    if mask is not None:
        if mask.shape != x.shape:
            raise ValueError(f"shape mismatch: x {tuple(x.shape)}, mask {tuple(mask.shape)}")
        values = values[mask.reshape(-1).bool()]
    count = values.numel()
    if count == 0:
        return 0, 0.0, 0.0
    mean = values.mean()
    return count, float(mean), float((values - mean).square().sum())


class RunningMoments:
    """Count, mean and M2 of all values seen so far (Chan et al. 1979 batch updates).

    `var` and `std` use Bessel's correction (n - 1); `normalize(x)` applies them.
    `count` is an int; `mean` and `m2` are python floats.
    """

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        """Add the entries of `x` (where `mask` is nonzero); no gradient."""
        self.update_from_moments(*batch_moments(x, mask))

    def update_from_moments(self, count: float, mean: float, m2: float) -> None:
        """Add an already-computed summary, e.g. another rank's `batch_moments`.

        Args:
            count: number of values (an integer, possibly as a float or 0-d tensor).
            mean, m2: their mean and sum of squared deviations (numbers or 0-d tensors).
        """
        count, mean, m2 = float(count), float(mean), float(m2)
        if count < 0 or not count.is_integer() or m2 < 0 or not (math.isfinite(mean) and math.isfinite(m2)):
            raise ValueError(f"invalid moments: count={count} (a non-negative integer), "
                             f"mean={mean}, m2={m2} (finite, m2 >= 0)")
        self.count, self.mean, self.m2 = combine_moments((self.count, self.mean, self.m2),
                                                         (int(count), mean, m2))

    @property
    def var(self) -> float:
        """Unbiased variance M2 / (n - 1); NaN before 2 values are seen."""
        return self.m2 / (self.count - 1) if self.count > 1 else float("nan")

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def normalize(self, x: torch.Tensor, subtract_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
        """`(x - mean) / (std + eps)`; with `subtract_mean=False` only `x / (std + eps)`
        (scale-only reward normalisation keeps the sign of the rewards).

        Raises:
            ValueError: fewer than 2 values seen (no variance yet).
        """
        if self.count < 2:
            raise ValueError(f"RunningMoments.normalize needs at least 2 values, has seen {self.count}")
        shifted = x - self.mean if subtract_mean else x
        return shifted / (self.std + eps)

    def state_dict(self) -> Dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        if set(state) != {"count", "mean", "m2"}:
            raise ValueError("RunningMoments state_dict keys must be ['count', 'm2', 'mean'], "
                             f"got {sorted(state)}")
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
