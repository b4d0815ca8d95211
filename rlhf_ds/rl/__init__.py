"""Pure torch RL math (no deepspeed, no files, no configs).

Every function documents its shapes and the source of its formula, and is tested
against a slow loop written in the tests and against hand-computed values.

Token-level losses divide by `num_tokens`, the GLOBAL token count of the optimizer
step (all ranks, all micro-batches), sequence-level ones by `num_pairs` /
`num_groups`; see `reduction.py`. Omitted, they default to the local count.
"""
from .dpo import DPO_LOSS_TYPES, dpo_loss
from .kto import kto_loss, kto_reference_point
from .entropy import entropy_from_logits
from .advantages import ADVANTAGE_ESTIMATORS, AdvantageEstimator, advantage_estimator
from .gae import gae
from .group_advantages import grpo_advantages, rloo_advantages
from .kl import KL_ESTIMATORS, kl_shaped_rewards, last_action_index, per_token_kl
from .kl_controller import AdaptiveKLController, FixedKLController
from .logprobs import IGNORE_INDEX, gather_logprobs
from .masked import masked_mean, masked_sum, masked_var, masked_whiten
from .ppo import IMPORTANCE_RATIOS, ppo_policy_loss
from .ranking import kwise_ranking_loss, pairwise_ranking_loss
from .ranking_metrics import kendall_tau, ranking_metrics, spearman_rho
from .reduction import LOSS_AGGREGATIONS, aggregate_loss, sequence_mean, token_mean
from .running_moments import RunningMoments, batch_moments, combine_moments
from .value import explained_variance, value_loss

__all__ = [
    # constants
    "ADVANTAGE_ESTIMATORS", "DPO_LOSS_TYPES", "IGNORE_INDEX", "IMPORTANCE_RATIOS", "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    # per-token quantities
    "gather_logprobs", "entropy_from_logits", "per_token_kl", "last_action_index",
    "kl_shaped_rewards",
    # masked reductions and the loss-averaging convention
    "masked_sum", "masked_mean", "masked_var", "masked_whiten", "token_mean", "sequence_mean",
    "aggregate_loss",
    # advantages: the estimator registry, and the pieces it is made of
    "AdvantageEstimator", "advantage_estimator", "gae", "grpo_advantages", "rloo_advantages",
    # losses
    "ppo_policy_loss", "value_loss", "explained_variance", "dpo_loss", "kto_loss", "kto_reference_point",
    "pairwise_ranking_loss", "kwise_ranking_loss",
    # evaluation
    "kendall_tau", "spearman_rho", "ranking_metrics",
    # state
    "FixedKLController", "AdaptiveKLController", "RunningMoments", "batch_moments", "combine_moments",
]
