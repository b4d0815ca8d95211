"""Reward-model ranking losses (Bradley-Terry).

Sources:
- Ouyang et al. 2022, "Training language models to follow instructions with human
  feedback" (InstructGPT), eq. 1:
  loss = -1/C(K,2) E[log sigmoid(r(x, y_w) - r(x, y_l))] over the C(K,2) pairs of a
  prompt's K ranked responses, all pairs of one prompt forming ONE batch element
  (training on each pair as its own element overfits, their section 3.5).
- Touvron et al. 2023, "Llama 2", eq. 2: the pairwise loss with a margin,
  -log sigmoid(r_chosen - r_rejected - m(r)), m larger for clearer preferences.

A margin in a group of K > 2 (InstructGPT eq. 1 with Llama 2's margin in each term): the group's
margin m_b applies to every ordered pair of the group,
  loss_b = 1/P_b * sum_{i better than j} -log sigmoid(s_i - s_j - m_b),
so a pair (K = 2, or a pair padded to K > 2 in a mixed batch) gets exactly the pairwise loss.

Groups (K-wise): `scores (B, K)` with `ranks (B, K)`, rank 0 best, lower is better.
An entry is missing where its rank is negative (-1) or where `mask` is 0, so rows
may hold different K. Equal ranks are a tie: the pair carries no preference and is
skipped.
"""
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ._checks import Count, check_count, check_ndim, check_same_shape
from .reduction import sequence_mean


def pairwise_ranking_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                          margin: Optional[Union[float, torch.Tensor]] = None,
                          num_pairs: Optional[Count] = None,
                          ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Bradley-Terry pairwise loss `-log sigmoid(r_chosen - r_rejected - margin)` (Llama 2, eq. 2).

    Args:
        chosen_scores: `(B,)` reward of the preferred response of each pair (with grad).
        rejected_scores: `(B,)` reward of the other response.
        margin: None, a number, or `(B,)` per-pair margins (Llama 2 uses larger margins
            for pairs rated "significantly better").
        num_pairs: global pair count of the optimizer step; default B.

    Returns:
        (loss, stats): `loss` 0-d fp32, `sum(per_pair) / num_pairs`. `stats` detached,
        over this call's pairs: `accuracy` (share with r_chosen > r_rejected; a tie
        counts as wrong), `margin` (mean r_chosen - r_rejected), `chosen_mean`,
        `rejected_mean`.
    """
    check_ndim("chosen_scores", chosen_scores, 1, "(B,)")
    check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    check_count("num_pairs", num_pairs)
    chosen, rejected = chosen_scores.float(), rejected_scores.float()
    diff = chosen - rejected
    if margin is not None:
        if isinstance(margin, torch.Tensor) and margin.dim() > 0:
            check_same_shape(chosen_scores=chosen_scores, margin=margin)
        margin = torch.as_tensor(margin, dtype=diff.dtype, device=diff.device).detach()
    else:
        margin = torch.zeros_like(diff)
    loss = sequence_mean(-F.logsigmoid(diff - margin), num_pairs)
    with torch.no_grad():
        stats = {
            "accuracy": (diff > 0).float().mean(),
            "margin": diff.mean(),
            "chosen_mean": chosen.mean(),
            "rejected_mean": rejected.mean(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def valid_entries(scores: torch.Tensor, ranks: torch.Tensor,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`(B, K)` bool: entries present in a group (rank >= 0 and, if given, mask nonzero)."""
    check_ndim("scores", scores, 2, "(B, K)")
    check_same_shape(scores=scores, ranks=ranks)
    if ranks.dtype.is_floating_point or ranks.dtype == torch.bool:
        raise ValueError(f"ranks must be an integer tensor (0 = best, -1 = missing), got {ranks.dtype}")
    valid = ranks >= 0
    if mask is not None:
        check_same_shape(scores=scores, mask=mask)
        valid = valid & mask.bool()
    return valid


def _preference_pairs(ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`(B, K, K)` bool: [b, i, j] is True where entry i is ranked strictly better than j."""
    both = valid[:, :, None] & valid[:, None, :]
    return both & (ranks[:, :, None] < ranks[:, None, :])


def kwise_ranking_loss(scores: torch.Tensor, ranks: torch.Tensor, mask: Optional[torch.Tensor] = None,
                       num_groups: Optional[Count] = None,
                       margin: Optional[Union[float, torch.Tensor]] = None,
                       ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """InstructGPT's K-wise loss (Ouyang et al. 2022, eq. 1): one prompt = one unit.

    Per group b: `loss_b = 1/P_b * sum_{i better than j} -log sigmoid(s_i - s_j - m_b)`
    with P_b its number of ordered pairs (C(K_b, 2) when there is no tie) and m_b the
    group's margin (Llama 2, eq. 2, in every pair; 0 without one). Then
    `loss = sum_b loss_b / num_groups`. Groups with no ordered pair (K_b < 2, or all
    tied) contribute 0 and are not counted by the default `num_groups`.

    Args:
        scores: `(B, K)` rewards of the K responses of each prompt (with grad).
        ranks: `(B, K)` integer ranks, 0 best, lower better; negative = missing.
        mask: optional `(B, K)`, 0 = missing (combined with the rank test).
        num_groups: global count of groups with at least one pair over the optimizer
            step; default: those of this call.
        margin: None, a number, or `(B,)` per-group margins.

    Returns:
        (loss, stats): `loss` 0-d fp32. `stats` detached: `accuracy` (share of all
        ordered pairs of this call with s_better > s_worse; a tie in score is wrong),
        `num_pairs` and `num_groups` (counts of this call, fp32).
    """
    valid = valid_entries(scores, ranks, mask)
    check_count("num_groups", num_groups)
    # Missing entries may hold garbage: zero them before differences (NaN gradients).
    s = torch.where(valid, scores.float(), 0.0)
    pairs = _preference_pairs(ranks, valid)
    diff = s[:, :, None] - s[:, None, :]
    m = torch.as_tensor(0.0 if margin is None else margin, dtype=diff.dtype, device=diff.device).detach()
    if m.dim() > 0:
        check_same_shape(group_scores=scores[:, 0], margin=m)
        m = m[:, None, None]                                    # the group's margin in each of its pairs
    per_pair = torch.where(pairs, -F.logsigmoid(diff - m), 0.0)
    pairs_per_group = pairs.sum(dim=(1, 2))
    per_group = per_pair.sum(dim=(1, 2)) / pairs_per_group.clamp(min=1)
    has_pairs = pairs_per_group > 0
    loss = sequence_mean(per_group, has_pairs.sum() if num_groups is None else num_groups)
    with torch.no_grad():
        n_pairs = pairs.sum()
        stats = {
            "accuracy": ((diff > 0) & pairs).sum() / n_pairs.clamp(min=1),
            "num_pairs": n_pairs.float(),
            "num_groups": has_pairs.sum().float(),
        }
    return loss, {k: v.detach().float() for k, v in stats.items()}
