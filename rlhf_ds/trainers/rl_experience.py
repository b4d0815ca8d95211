"""RL loop steps 4-5: old and reference log-probs (and critic values), then KL and advantages.

Every per-token tensor is `(B, R)`, aligned with the response tokens (see rl_sampling.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, NamedTuple, Optional

import torch

from ..data.batch import TensorBatch
from ..engine import Engine, all_reduce_sum
from ..rl.advantages import AdvantageEstimator
from .rl_sampling import Rollout


@dataclass
class Experience(TensorBatch):
    """What the update learns from (this rank's rows)."""
    sequences: torch.Tensor                     # (B, P + R)
    attention_mask: torch.Tensor                # (B, P + R)
    action_mask: torch.Tensor                   # (B, R) the tokens the losses count (see `loss_mask`)
    old_logprobs: torch.Tensor                  # (B, R) actor log-probs at rollout time
    advantages: torch.Tensor                    # (B, R)
    ref_logprobs: Optional[torch.Tensor] = None  # (B, R) reference log-probs; None without a KL term
    old_values: Optional[torch.Tensor] = None   # (B, R) critic values at rollout time; None without a critic
    returns: Optional[torch.Tensor] = None      # (B, R) value targets; None without a critic


class Scored(NamedTuple):
    old_logprobs: Optional[torch.Tensor]        # (B, R); None only when score_rollout was given no actor
    ref_logprobs: Optional[torch.Tensor]        # (B, R) or None
    values: Optional[torch.Tensor]              # (B, R) or None


def eos_blocking(min_new_tokens: int, eos_token_id: Optional[int]) -> Dict[str, object]:
    """PolicyModel.forward's keywords that score responses sampled with EOS blocked at their first
    `min_new_tokens` positions under that same distribution ({} when nothing was blocked)."""
    return dict(min_new_tokens=min_new_tokens, eos_token_id=eos_token_id) if min_new_tokens else {}


@torch.no_grad()
def score_rollout(rollout: Rollout, actor: Engine, ref: Optional[Engine], critic: Optional[Engine], micro: int,
                  temperature: float, min_new_tokens: int = 0, eos_token_id: Optional[int] = None) -> Scored:
    """Step 4: old (actor) and reference log-probs, and critic values when there is a critic, `micro`
    rows per forward. Every rank runs the same number of forwards (ZeRO-3 forwards are collective).
    `min_new_tokens` and `eos_token_id`: the responses were sampled with EOS blocked at their first
    `min_new_tokens` positions, so they are scored under the same distribution (PolicyModel.forward).
    `actor` None: no old log-probs (rl_onestep.py takes them from the update's forward)."""
    blocked = eos_blocking(min_new_tokens, eos_token_id)
    r = rollout.response_length
    old_lp, ref_lp, values = [], [], []
    trained = [e for e in (actor, critic) if e is not None]
    for engine in trained:
        engine.eval()
    for part in rollout.split(micro):
        seqs, attn = part.sequences, part.attention_mask
        if actor is not None:
            old_lp.append(actor(seqs, attn, num_scored=r, temperature=temperature, **blocked)["logprobs"])
        if ref is not None:
            ref_lp.append(ref(seqs, attn, num_scored=r, temperature=temperature, **blocked)["logprobs"])
        if critic is not None:
            values.append(critic(seqs, attn, num_values=r)["values"])
    for engine in trained:
        engine.train()
    return Scored(torch.cat(old_lp) if old_lp else None, torch.cat(ref_lp) if ref_lp else None,
                  torch.cat(values) if values else None)


def global_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Whiten `x` `(B, R)` over masked entries of ALL ranks (mean and variance all-reduced), so the
    result does not depend on how the rollout was split. Masked entries stay 0. The same formula as
    `rl.masked_whiten` (unbiased variance), over the whole batch."""
    m = mask.to(x.dtype)
    stats = torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]).double()
    total = all_reduce_sum(stats)
    count = total[2].clamp(min=1.0)
    mean = total[0] / count
    var = (total[1] / count - mean * mean).clamp(min=0.0) * count / (count - 1).clamp(min=1.0)
    out = (x - mean.to(x.dtype)) * torch.rsqrt(var.to(x.dtype) + eps)
    if not shift_mean:
        out = out + mean.to(x.dtype)
    return out * m


class Advantaged(NamedTuple):
    rewards: torch.Tensor                       # (B, R) token rewards the estimator read
    kl: torch.Tensor                            # (B, R) per-token KL(pi_old || pi_ref) estimate (0 without a reference)
    advantages: torch.Tensor                    # (B, R)
    returns: Optional[torch.Tensor]             # (B, R) or None


def advantages_step(scores: torch.Tensor, scored: Scored, mask: torch.Tensor, estimator: AdvantageEstimator,
                    ops, p, kl_coef: float, n_samples: int) -> Advantaged:
    """Step 5: token rewards (the score at the last response token, and -kl_coef * KL on every token
    when the KL is in the reward), then the configured estimator, whitening over all ranks where the
    method whitens. `ops` supplies the fast KL-shaped rewards and GAE scan (same results as rl's)."""
    in_reward = p.kl_mode == "reward"
    estimator_name = p.kl_estimator if in_reward else p.kl_loss_estimator
    ref = scored.ref_logprobs if scored.ref_logprobs is not None else scored.old_logprobs
    # Without a reference the "reference" is the policy itself: KL 0, and the rewards are the scores alone.
    rewards, kl = ops.kl_shaped_rewards(scores, scored.old_logprobs, ref, mask, kl_coef if in_reward else 0.0,
                                        estimator_name)
    whiten = global_whiten if p.whiten_advantages else None
    advantages, returns = estimator.fn(rewards, mask, scored.values, group_size=n_samples, gamma=p.gamma, lam=p.lam,
                                       whiten=whiten, scan=ops.gae)
    return Advantaged(rewards=rewards, kl=kl, advantages=advantages, returns=returns)


def loss_mask(rollout: Rollout, mask_truncated: bool) -> torch.Tensor:
    """`(B, R)` the tokens the losses count: every response token, or with `mask_truncated` none of a
    completion cut at the length limit (DAPO's overlong filtering, Yu et al. 2025, section 3.4): its
    reward judged an unfinished answer, so its tokens would be trained on noise."""
    if not mask_truncated:
        return rollout.action_mask
    return rollout.action_mask * rollout.ended.to(rollout.action_mask.dtype).unsqueeze(1)
