"""RL loop steps 4 and 6 sharing the actor's (and critic's) forward, when an iteration is one optimizer
step on one micro-batch per rank (ppo_epochs=1, one minibatch, micro-batch = minibatch: the defaults of
every recipe's demo and of the issue-9 benchmark).

Then the old log-probs and old values that step 4 records are bit for bit what the update's own forward
returns (the same weights, no dropout in any trained model: the on-policy property that
tests/core/test_rl_on_policy.py checks as ratio == 1 exactly). So that forward runs once, with its
autograd graph kept: its detached outputs are the old log-probs and values the advantages are computed
from, and the update back-propagates through the same outputs instead of running the forward again.
TRL's GRPOTrainer makes the same observation for its old log-probs (it reuses the detached current
ones when each batch is used for exactly one step); here it covers the critic's values too.

Nothing changes in the results: the forward is the update's (train mode, the update's row order: the
first minibatch permutation `minibatches` draws), its outputs are scattered back to the rollout's row
order for the advantages, and `rl_update` is handed them for its only micro-batch. What it costs:
the activations of the actor's and critic's forwards stay alive through the advantage computation
(the update would hold the same activations a moment later; the reference runs before them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..engine import Engine
from .rl_experience import Scored, eos_blocking, score_rollout
from .rl_sampling import Rollout
from .rl_update import UpdateSettings, minibatches


@dataclass
class SharedForward:
    """The update's forward of its only micro-batch, run ahead during step 4."""
    rows: torch.Tensor                   # (B,) the micro-batch's rows, in the order the update draws them
    actor_out: dict                      # PolicyModel outputs with graph: logprobs (B, R), entropy (B, R)
    values: Optional[torch.Tensor]       # (B, R) critic values with graph; None without a critic


def shares_forward(steps_per_iteration: int, grad_accum: int) -> bool:
    """One optimizer step of one micro-batch per iteration: the update's forward can be step 4's."""
    return steps_per_iteration == 1 and grad_accum == 1


def score_with_update_forward(rollout: Rollout, actor: Engine, ref, critic: Optional[Engine], micro: int,
                              s: UpdateSettings) -> tuple:
    """Step 4 for a one-step iteration: reference log-probs as `score_rollout` computes them, then the
    update's own actor (and critic) forward on its rows. Returns (`Scored` in rollout order,
    `SharedForward` for `rl_update`)."""
    ref_lp = None
    if ref is not None:
        ref_lp = score_rollout(rollout, None, ref, None, micro, s.temperature, s.min_new_tokens,
                               s.eos_token_id).ref_logprobs
    rows = next(minibatches(len(rollout), s.minibatch_per_rank, s.ppo_epochs, s.seed))
    part = rollout.index(rows)
    r = rollout.response_length
    blocked = eos_blocking(s.min_new_tokens, s.eos_token_id)
    # Train mode, as the update runs (dropout is off in every trained model, so this is the eval forward).
    actor_out = actor(part.sequences, part.attention_mask, num_scored=r, temperature=s.temperature,
                      with_entropy=True, **blocked)
    values = critic(part.sequences, part.attention_mask, num_values=r)["values"] if critic is not None else None
    old_lp = _unpermute(actor_out["logprobs"].detach(), rows)
    old_values = _unpermute(values.detach(), rows) if values is not None else None
    return Scored(old_lp, ref_lp, old_values), SharedForward(rows=rows, actor_out=actor_out, values=values)


def _unpermute(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    out[rows.to(x.device)] = x
    return out
