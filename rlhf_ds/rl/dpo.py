"""Offline preference losses on pairs: DPO and its variants, one registry, one signature.

Every loss is a function of one number per pair, the preference margin
`h = s(y_w) - s(y_l)`, where a response's score `s(y)` is its log-ratio to the reference
`log pi(y|x) - log pi_ref(y|x)` (the whole response: summed token log-probs, Rafailov et
al. 2023 eq. 7), divided by its token count `|y|` when length-normalised, and for the
reference-free SimPO the policy's own length-normalised log-prob `log pi(y|x) / |y|`.
With beta > 0, label smoothing eps and target margin gamma:

    sigmoid       -log sigmoid(beta h)
                  DPO, Rafailov et al. 2023, "Direct Preference Optimization", eq. 7.
    ipo           (h - 1 / (2 beta))^2
                  IPO, Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning
                  from Human Preferences", eq. 17 (tau = beta). With `length_normalize`, h uses
                  per-token log-ratios (the form TRL's "ipo" computes): with summed log-probs h
                  grows with the response length while the target 1 / (2 beta) does not.
    conservative  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
                  cDPO, Mitchell 2023, "A note on DPO with noisy preferences & relationship to
                  IPO": each label is flipped with probability eps.
    robust        (-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps)
                  rDPO, Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models
                  with Noisy Feedback", section 3: an unbiased estimate of the clean-label loss.
    hinge         max(0, 1 - beta h)
                  SLiC-HF's rank calibration loss (Zhao et al. 2023) on reference log-ratios,
                  as the "hinge-norm" loss of RSO (Liu et al. 2024, "Statistical Rejection
                  Sampling Improves Preference Optimization", section 4.1) with margin 1/beta.
    simpo         -log sigmoid(beta h - gamma),  s(y) = log pi(y|x) / |y|, no reference
                  SimPO, Meng et al. 2024, "SimPO: Simple Preference Optimization with a
                  Reference-Free Reward", eq. 6.

An NLL term on the chosen response may be added to any of them (`rpo_alpha`): RPO, Pang et
al. 2024, "Iterative Reasoning Preference Optimization", section 2 (DPO + NLL), there normalised by the
length of prompt plus response; here by the chosen response's own token count, so that each
pair weighs the same: `alpha * (-log pi(y_w|x) / |y_w|)`.

The implicit reward of a response is `beta * s(y)` (Rafailov et al., section 4); the stats
report it (SimPO's reward is `beta * log pi(y|x) / |y|`, its section 2.2).

Every per-pair loss is summed and divided by `num_pairs`, the pair count of the whole
optimizer step over all ranks (see reduction.py), so splitting a batch changes nothing.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ._checks import Count, check_count, check_ndim, check_same_shape
from .reduction import sequence_mean

# (h (B,), beta, label_smoothing, gamma) -> per-pair loss (B,)
PairLoss = Callable[[torch.Tensor, float, float, float], torch.Tensor]


def _sigmoid(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    return -F.logsigmoid(beta * h)


def _ipo(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    return (h - 1.0 / (2.0 * beta)).square()


def _conservative(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def _robust(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    return (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * eps)


def _hinge(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    return torch.relu(1.0 - beta * h)


def _simpo(h: torch.Tensor, beta: float, eps: float, gamma: float) -> torch.Tensor:
    return -F.logsigmoid(beta * h - gamma)


DPO_LOSSES: Dict[str, PairLoss] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
    "conservative": _conservative,
    "robust": _robust,
    "hinge": _hinge,
    "simpo": _simpo,
}
DPO_LOSS_TYPES = tuple(DPO_LOSSES)
# Which losses read label_smoothing, read gamma, and need no reference model.
SMOOTHED = ("conservative", "robust")
WITH_GAMMA = ("simpo",)
REFERENCE_FREE = ("simpo",)


def _check_options(loss_type: str, beta: float, label_smoothing: float, gamma: float, has_ref: bool) -> None:
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; allowed: {', '.join(DPO_LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type in SMOOTHED:
        if not 0.0 < label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in (0, 0.5) for loss_type {loss_type!r}, got {label_smoothing}")
    elif label_smoothing != 0.0:
        raise ValueError(f"label_smoothing applies to loss_type {' and '.join(map(repr, SMOOTHED))} only, "
                         f"got {label_smoothing} with {loss_type!r}")
    if loss_type not in WITH_GAMMA and gamma != 0.0:
        raise ValueError(f"gamma (the target margin) applies to loss_type 'simpo' only, got {gamma} with "
                         f"{loss_type!r}")
    if loss_type in REFERENCE_FREE and has_ref:
        raise ValueError(f"loss_type {loss_type!r} is reference-free: pass no reference log-probs")
    if loss_type not in REFERENCE_FREE and not has_ref:
        raise ValueError(f"loss_type {loss_type!r} needs the reference log-probs of both responses")


def _per_token(logps: torch.Tensor, lengths: Optional[torch.Tensor], name: str) -> torch.Tensor:
    if lengths is None:
        raise ValueError(f"length normalisation needs {name} (the response token counts)")
    check_same_shape(**{"logps": logps, name: lengths})
    return logps / lengths.float().clamp(min=1.0)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: Optional[torch.Tensor] = None, ref_rejected_logps: Optional[torch.Tensor] = None,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0, gamma: float = 0.0,
             length_normalize: bool = False, chosen_lengths: Optional[torch.Tensor] = None,
             rejected_lengths: Optional[torch.Tensor] = None, rpo_alpha: float = 0.0,
             num_pairs: Optional[Count] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """A pairwise preference loss of `DPO_LOSS_TYPES` (formulas and sources in the module docstring),
    `sum(per_pair) / num_pairs`, plus `rpo_alpha` times the chosen responses' per-token NLL.

    Args:
        policy_chosen_logps, policy_rejected_logps: `(B,)` summed response log-probs under the
            policy (with grad).
        ref_chosen_logps, ref_rejected_logps: `(B,)` the same under the frozen reference (constant);
            None for the reference-free "simpo".
        beta: > 0; the KL strength of DPO, the regularisation tau of IPO, SimPO's reward scale.
        loss_type: one of `DPO_LOSS_TYPES`.
        label_smoothing: eps, the assumed rate of flipped labels, in (0, 0.5) for "conservative" and
            "robust" (0 for the others).
        gamma: SimPO's target reward margin (0 for the others).
        length_normalize: divide each response's log-ratio by its token count (always on for "simpo").
        chosen_lengths, rejected_lengths: `(B,)` response token counts; needed to length-normalise and
            for the NLL term.
        rpo_alpha: weight of the NLL term `-log pi(y_w|x) / |y_w|` (0: none).
        num_pairs: global pair count of the optimizer step; default B.

    Returns:
        (loss, stats): `loss` 0-d fp32. `stats` detached, means over this call's pairs:
        `rewards_chosen`, `rewards_rejected` (implicit rewards beta * s(y)), `reward_accuracy` (share
        with chosen reward > rejected reward; a tie counts as wrong), `reward_margin`, and `nll` (the
        chosen responses' per-token NLL) when `rpo_alpha` > 0.
    """
    has_ref = ref_chosen_logps is not None or ref_rejected_logps is not None
    _check_options(loss_type, beta, label_smoothing, gamma, has_ref)
    check_ndim("policy_chosen_logps", policy_chosen_logps, 1, "(B,)")
    check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    if has_ref:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("give the reference log-probs of both responses, or neither")
        check_same_shape(policy_chosen_logps=policy_chosen_logps, ref_chosen_logps=ref_chosen_logps,
                         ref_rejected_logps=ref_rejected_logps)
    check_count("num_pairs", num_pairs)
    if rpo_alpha < 0:
        raise ValueError(f"rpo_alpha must be >= 0, got {rpo_alpha}")

    chosen, rejected = policy_chosen_logps.float(), policy_rejected_logps.float()
    if has_ref:
        chosen = chosen - ref_chosen_logps.float().detach()
        rejected = rejected - ref_rejected_logps.float().detach()
    if length_normalize or loss_type in REFERENCE_FREE:
        chosen = _per_token(chosen, chosen_lengths, "chosen_lengths")
        rejected = _per_token(rejected, rejected_lengths, "rejected_lengths")
    per_pair = DPO_LOSSES[loss_type](chosen - rejected, float(beta), float(label_smoothing), float(gamma))
    nll = None
    if rpo_alpha > 0:
        nll = -_per_token(policy_chosen_logps.float(), chosen_lengths, "chosen_lengths")
        per_pair = per_pair + rpo_alpha * nll
    loss = sequence_mean(per_pair, num_pairs)

    with torch.no_grad():
        chosen_rewards, rejected_rewards = beta * chosen, beta * rejected
        stats = {
            "rewards_chosen": chosen_rewards.mean(),
            "rewards_rejected": rejected_rewards.mean(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        }
        if nll is not None:
            stats["nll"] = nll.mean()
    return loss, {k: v.detach() for k, v in stats.items()}
