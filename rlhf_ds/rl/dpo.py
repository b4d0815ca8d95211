"""Direct preference optimisation losses.

Sources:
- DPO: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
  Secretly a Reward Model", eq. 7:
  L = -log sigmoid(beta * h),  h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l).
- IPO: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
  Human Preferences", eq. 17: L = (h - 1/(2 tau))^2, with tau = `beta` here.
- Conservative DPO (cDPO): E. Mitchell 2023, "A note on DPO with noisy preferences &
  relationship to IPO": labels flipped with probability eps (`label_smoothing`),
  L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h).

The implicit reward of a response is beta * log pi(y)/pi_ref(y) (Rafailov et al.,
section 4); the stats report it.

Log-probs are whole-sequence sums of the response tokens (eq. 7 uses sequence
log-likelihoods). This function never averages them. For IPO, note that h then grows
with response length while the target 1/(2 beta) does not, so the strength of the
regularisation depends on length; some implementations (TRL's "ipo") pass
length-averaged log-probs (sum / number of response tokens) instead. Both are the
caller's choice: pass averaged log-probs to get the length-normalised variant.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ._checks import Count, check_count, check_ndim, check_same_shape
from .reduction import sequence_mean


def _sigmoid(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return -F.logsigmoid(beta * h)


def _conservative(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def _ipo(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return (h - 1.0 / (2.0 * beta)).square()


DPO_LOSSES: Dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
    "conservative": _conservative,
}
DPO_LOSS_TYPES = tuple(DPO_LOSSES)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             num_pairs: Optional[Count] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """DPO (eq. 7 of Rafailov et al. 2023), IPO (Azar et al. 2023, eq. 17) or cDPO.

    With `h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)` (log-probs):
    - "sigmoid": `-log sigmoid(beta h)`;
    - "ipo": `(h - 1/(2 beta))^2`;
    - "conservative": `-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`,
      eps = `label_smoothing` in (0, 0.5), the assumed rate of flipped labels.
    The loss is `sum(per_pair) / num_pairs`.

    Args:
        policy_chosen_logps, policy_rejected_logps: `(B,)` summed response log-probs
            under the policy (with grad).
        ref_chosen_logps, ref_rejected_logps: `(B,)` the same under the frozen
            reference model (constant).
        beta: > 0; the KL strength of DPO, the regularisation tau of IPO.
        loss_type: one of `DPO_LOSS_TYPES`.
        label_smoothing: eps for "conservative" only (0 for the others).
        num_pairs: global pair count of the optimizer step; default B.

    Returns:
        (loss, stats): `loss` 0-d fp32. `stats` detached, over this call's pairs:
        `rewards_chosen`, `rewards_rejected` (means of the implicit rewards
        beta * (policy - ref) log-probs), `reward_accuracy` (share with chosen reward >
        rejected reward; a tie counts as wrong), `reward_margin` (mean difference).
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; allowed: {', '.join(DPO_LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type == "conservative":
        if not 0.0 < label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in (0, 0.5) for loss_type 'conservative', "
                             f"got {label_smoothing}")
    elif label_smoothing != 0.0:
        raise ValueError(f"label_smoothing applies to loss_type 'conservative' only, "
                         f"got {label_smoothing} with {loss_type!r}")
    check_ndim("policy_chosen_logps", policy_chosen_logps, 1, "(B,)")
    check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                     ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    check_count("num_pairs", num_pairs)

    chosen_log_ratio = policy_chosen_logps.float() - ref_chosen_logps.float().detach()
    rejected_log_ratio = policy_rejected_logps.float() - ref_rejected_logps.float().detach()
    h = chosen_log_ratio - rejected_log_ratio
    loss = sequence_mean(DPO_LOSSES[loss_type](h, float(beta), float(label_smoothing)), num_pairs)

    with torch.no_grad():
        chosen_rewards = beta * chosen_log_ratio
        rejected_rewards = beta * rejected_log_ratio
        stats = {
            "rewards_chosen": chosen_rewards.mean(),
            "rewards_rejected": rejected_rewards.mean(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}
