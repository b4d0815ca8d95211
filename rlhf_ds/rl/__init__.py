"""Pure torch RL math (no deepspeed, no files, no configs).

Every function documents its shapes and the source of its formula, and is tested
against a slow loop written in the tests and against hand-computed values.
"""
from .gae import gae
from .kl import KL_ESTIMATORS, kl_shaped_rewards, last_action_index, per_token_kl
from .logprobs import IGNORE_INDEX, gather_logprobs
from .masked import masked_mean, masked_sum, masked_var, masked_whiten
from .reduction import sequence_mean, token_mean

__all__ = [
    "IGNORE_INDEX", "KL_ESTIMATORS",
    "gae", "gather_logprobs", "kl_shaped_rewards", "last_action_index", "per_token_kl",
    "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    "sequence_mean", "token_mean",
]
