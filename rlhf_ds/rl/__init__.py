"""Pure torch RL math (no deepspeed, no files, no configs).

Every function documents its shapes and the source of its formula, and is tested
against a slow loop written in the tests and against hand-computed values.
"""
from .entropy import entropy_from_logits
from .gae import gae
from .kl import KL_ESTIMATORS, kl_shaped_rewards, last_action_index, per_token_kl
from .logprobs import IGNORE_INDEX, gather_logprobs
from .masked import masked_mean, masked_sum, masked_var, masked_whiten
from .ppo import ppo_policy_loss
from .reduction import sequence_mean, token_mean
from .value import explained_variance, value_loss

__all__ = [
    "IGNORE_INDEX", "KL_ESTIMATORS",
    "gae", "gather_logprobs", "kl_shaped_rewards", "last_action_index", "per_token_kl",
    "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    "sequence_mean", "token_mean",
    "entropy_from_logits", "explained_variance", "ppo_policy_loss", "value_loss",
]
