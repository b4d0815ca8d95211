"""KTO: preference optimisation from unpaired examples, each marked desirable or undesirable.

Source: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
section 4.1 (the KTO loss). With the log-ratio `r = log pi(y|x) - log pi_ref(y|x)` of a response and the reference
point `z0 = max(0, KL(pi || pi_ref))`:

    desirable y     lambda_D * (1 - sigmoid(beta (r - z0)))
    undesirable y   lambda_U * (1 - sigmoid(beta (z0 - r)))

`z0` is estimated on the batch from mismatched pairs, each prompt with another record's
completion (their section 4.1: `z0 = max(0, mean_i (log pi(y_j|x_i) - log pi_ref(y_j|x_i)))`),
and back-propagated through neither model; `kto_reference_point` computes it from sums over
all ranks. The weights balance the two kinds: the paper keeps
`lambda_D n_D / (lambda_U n_U)` in [1, 4/3].

The loss is `sum(per example) / num_examples`, the example count of the optimizer step over
all ranks (see reduction.py).
"""
from typing import Dict, Optional, Tuple

import torch

from ._checks import Count, check_count, check_ndim, check_same_shape
from .reduction import sequence_mean


def kto_reference_point(kl_logratio_sum: torch.Tensor, num_examples: Count) -> torch.Tensor:
    """`z0 = max(0, sum of mismatched log-ratios / their count)`, detached.

    Args:
        kl_logratio_sum: 0-d sum over the mismatched pairs of the step (all ranks) of
            `log pi(y_j|x_i) - log pi_ref(y_j|x_i)`.
        num_examples: the number of mismatched pairs in that sum.
    """
    check_count("num_examples", num_examples)
    mean = kl_logratio_sum.detach().float() / max(float(num_examples), 1.0)
    return mean.clamp(min=0.0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             reference_point: torch.Tensor, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0, num_examples: Optional[Count] = None,
             ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """KTO (Ethayarajh et al. 2024, section 4.1; see the module docstring).

    Args:
        policy_logps: `(B,)` summed response log-probs under the policy (with grad).
        ref_logps: `(B,)` the same under the frozen reference (constant).
        desirable: `(B,)` bool, True where the response is desirable.
        reference_point: 0-d `z0` (see `kto_reference_point`); never differentiated.
        beta: > 0, the scale of the value function.
        desirable_weight, undesirable_weight: lambda_D, lambda_U >= 0.
        num_examples: global example count of the optimizer step; default B.

    Returns:
        (loss, stats): `loss` 0-d fp32. `stats` detached sums over this call's examples (means need
        the counts, which differ by kind): `rewards_desirable_sum`, `rewards_undesirable_sum` (of the
        implicit rewards beta * r), `num_desirable`, `num_undesirable`.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError(f"KTO weights must be >= 0, got desirable {desirable_weight}, undesirable "
                         f"{undesirable_weight}")
    check_ndim("policy_logps", policy_logps, 1, "(B,)")
    check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor, got {desirable.dtype}")
    check_count("num_examples", num_examples)
    r = policy_logps.float() - ref_logps.float().detach()
    z0 = torch.as_tensor(reference_point, dtype=r.dtype, device=r.device).detach()
    per_example = torch.where(desirable, desirable_weight * (1.0 - torch.sigmoid(beta * (r - z0))),
                              undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r))))
    loss = sequence_mean(per_example, num_examples)
    with torch.no_grad():
        rewards = beta * r
        stats = {
            "rewards_desirable_sum": torch.where(desirable, rewards, 0.0).sum(),
            "rewards_undesirable_sum": torch.where(desirable, 0.0, rewards).sum(),
            "num_desirable": desirable.sum().float(),
            "num_undesirable": (~desirable).sum().float(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}
