"""Rank correlations between reward-model scores and reference rankings, per group.

Sources: Kendall 1945, "The treatment of ties in ranking problems" (tau-b);
Spearman's rho as the Pearson correlation of average ranks ("fractional ranking"),
which is how ties are usually treated (e.g. scipy.stats.spearmanr).

Inputs follow `ranking.py`: `scores (B, K)`, higher is better; `ranks (B, K)`, 0 best,
negative (or `mask` 0) = missing. Both coefficients are +1 when the scores order
the responses exactly as the ranks do and -1 when exactly reversed.

Ties: tau-b divides by sqrt((n0 - n1)(n0 - n2)) with n0 = C(n, 2) and n1, n2 the tied
pairs in each variable, so a tied pair counts neither as concordant nor as discordant
and a tie-free ranking still reaches +-1. Spearman uses average ranks for tied values.
A group where either side has no variation (fewer than 2 entries, or all tied) has no
correlation: NaN for that group, and it is left out of the averages.
All arithmetic in fp64; no gradient.
"""
from typing import Dict, Optional

import torch

from .ranking import valid_entries


def _unordered_pairs(valid: torch.Tensor) -> torch.Tensor:
    """`(B, K, K)` bool: [b, i, j] for i < j, both entries present (each pair once)."""
    k = valid.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=valid.device).triu(diagonal=1)
    return valid[:, :, None] & valid[:, None, :] & upper


def _pair_signs(x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """`(B, K, K)` sign(x_i - x_j) on `pairs`, 0 elsewhere."""
    return torch.where(pairs, torch.sign(x[:, :, None] - x[:, None, :]), 0.0)


@torch.no_grad()
def kendall_tau(scores: torch.Tensor, ranks: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Kendall's tau-b per group: `(n_c - n_d) / sqrt((n0 - n1)(n0 - n2))` (Kendall 1945).

    Args:
        scores: `(B, K)` predicted scores (higher = better).
        ranks: `(B, K)` reference ranks (0 best, negative = missing).
        mask: optional `(B, K)`, 0 = missing.

    Returns:
        `(B,)` fp64 in [-1, 1]; NaN for groups without variation (see module docstring).
    """
    valid = valid_entries(scores, ranks, mask)
    x = torch.where(valid, scores.double(), 0.0)
    y = torch.where(valid, -ranks.double(), 0.0)  # negate: rank 0 is the best
    pairs = _unordered_pairs(valid)
    sx, sy = _pair_signs(x, pairs), _pair_signs(y, pairs)
    n = valid.sum(dim=1).double()
    n0 = n * (n - 1) / 2
    tied_x = (pairs & (sx == 0)).sum(dim=(1, 2)).double()
    tied_y = (pairs & (sy == 0)).sum(dim=(1, 2)).double()
    denominator = torch.sqrt((n0 - tied_x) * (n0 - tied_y))
    numerator = (sx * sy).sum(dim=(1, 2))
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.full_like(n, float("nan")))


def _average_ranks(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`(B, K)` 1-based ranks of x among the valid entries of its row, ties averaged."""
    other = valid[:, None, :]
    below = ((x[:, None, :] < x[:, :, None]) & other).sum(dim=2).double()
    equal = ((x[:, None, :] == x[:, :, None]) & other).sum(dim=2).double()  # includes itself
    return below + (equal + 1) / 2


@torch.no_grad()
def spearman_rho(scores: torch.Tensor, ranks: torch.Tensor,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Spearman's rho per group: the Pearson correlation of average ranks.

    Args:
        scores: `(B, K)` predicted scores (higher = better).
        ranks: `(B, K)` reference ranks (0 best, negative = missing).
        mask: optional `(B, K)`, 0 = missing.

    Returns:
        `(B,)` fp64 in [-1, 1]; NaN for groups without variation (see module docstring).
    """
    valid = valid_entries(scores, ranks, mask)
    rx = _average_ranks(torch.where(valid, scores.double(), 0.0), valid)
    ry = _average_ranks(torch.where(valid, -ranks.double(), 0.0), valid)
    n = valid.sum(dim=1).double().clamp(min=1)

    def centred(r):
        return torch.where(valid, r - (torch.where(valid, r, 0.0).sum(dim=1, keepdim=True) / n[:, None]), 0.0)

    cx, cy = centred(rx), centred(ry)
    denominator = torch.sqrt(cx.square().sum(dim=1) * cy.square().sum(dim=1))
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    rho = (cx * cy).sum(dim=1) / safe
    # Guard against |rho| = 1 + 1e-16 from rounding.
    return torch.where(denominator > 0, rho.clamp(-1.0, 1.0), torch.full_like(rho, float("nan")))


def ranking_metrics(scores: torch.Tensor, ranks: torch.Tensor,
                    mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Per-group Kendall tau-b and Spearman rho, averaged over the groups where defined.

    Args:
        scores, ranks, mask: as in `kendall_tau`.

    Returns:
        dict of 0-d fp64 tensors: `kendall_tau`, `spearman_rho` (NaN if no group is
        defined) and `num_groups` (groups where tau is defined; rho is defined on the
        same groups).
    """
    tau = kendall_tau(scores, ranks, mask)
    rho = spearman_rho(scores, ranks, mask)
    defined = ~torch.isnan(tau)
    return {"kendall_tau": tau.nanmean(), "spearman_rho": rho.nanmean(),
            "num_groups": defined.sum().double()}
