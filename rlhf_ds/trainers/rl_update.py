"""RL loop step 6: `ppo_epochs` passes over the experience in minibatches: the clipped policy loss
(+ entropy bonus, + KL loss, + ptx loss) on the actor, then the value loss on the critic when the
advantage estimator has one.

Every loss divides by counts over the whole minibatch on all ranks (tokens, sequences, ptx target
tokens; all-reduced once per minibatch), so the update does not depend on the number of ranks or
micro-batches (tests/multirank/test_rank_invariance.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional

import torch

from ..engine import Engine
from ..rl import aggregate_loss, per_token_kl, ppo_policy_loss, token_mean, value_loss
from .rl_experience import Experience, eos_blocking
from .rl_metrics import StatSums, reduce_sums
from .sft import sft_token_loss


@dataclass
class UpdateSettings:
    ppo_epochs: int
    minibatch_per_rank: int
    micro: int
    clip_range: float
    dual_clip: Optional[float]
    value_clip: Optional[float]
    entropy_coef: float
    temperature: float
    ptx_coef: float = 0.0
    seed: int = 0
    clip_range_low: Optional[float] = None
    clip_range_high: Optional[float] = None
    importance_ratio: str = "token"
    loss_aggregation: str = "token_mean"
    max_length: Optional[int] = None       # the constant divisor of seq_mean_token_sum_norm
    kl_loss_coef: float = 0.0              # > 0: kl_loss_coef * KL(pi || pi_ref) is a loss term
    kl_loss_estimator: str = "k3"
    min_new_tokens: int = 0                # EOS was blocked at the first N sampled positions: score so too
    eos_token_id: Optional[int] = None


def minibatches(n: int, size: int, epochs: int, seed: int) -> Iterator[torch.Tensor]:
    """Row indices of each minibatch: a fresh permutation of this rank's rollout per epoch, drawn from
    a generator seeded by (seed, epoch) so a resumed run shuffles exactly as the original."""
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n, generator=g)
        for start in range(0, n, size):
            yield order[start:start + size]


def _targets(batch) -> torch.Tensor:
    return batch.labels[:, 1:] != -100


def rl_update(exp: Experience, actor: Engine, critic: Optional[Engine], s: UpdateSettings,
              ptx_batches: Optional[Callable[[], Iterator]] = None,
              after_actor_step: Optional[Callable[[], None]] = None, shared=None) -> Dict[str, float]:
    """Train the actor (and the critic, if any) on one experience; return the statistics over all ranks.

    `ptx_batches()` yields this rank's ptx micro-batches (`SFTBatch`), one per actor micro-batch.
    `shared`: a `rl_onestep.SharedForward`, the actor's (and critic's) forward of the only micro-batch,
    already run during step 4; used in place of running it again.
    Losses are logged as the mean over optimizer steps of each step's loss; per-token figures as
    token-weighted means."""
    stats = StatSums()
    blocked = eos_blocking(s.min_new_tokens, s.eos_token_id)
    r = exp.action_mask.shape[1]
    n_minibatches = 0
    use_ptx = ptx_batches is not None and s.ptx_coef > 0
    for rows in minibatches(len(exp), s.minibatch_per_rank, s.ppo_epochs, s.seed):
        n_minibatches += 1
        mb = exp.index(rows)
        parts = mb.split(s.micro)
        if shared is not None and (n_minibatches > 1 or len(parts) > 1 or not torch.equal(rows, shared.rows)):
            raise RuntimeError("a shared forward covers exactly one micro-batch of one minibatch, in its row order")
        ptx_parts = None
        if use_ptx:
            # All of this minibatch's ptx micro-batches first: their global target count divides the
            # ptx loss, as the response-token count divides the policy loss (Engine.backward's rule).
            ptx_iter = ptx_batches()
            ptx_parts = [next(ptx_iter) for _ in parts]
        counts = reduce_sums({"tokens": float(mb.action_mask.sum()),
                              "sequences": float(mb.action_mask.bool().any(dim=1).sum()),
                              "ptx_tokens": sum(float(_targets(b).sum()) for b in ptx_parts or [])})
        tokens, sequences = max(counts["tokens"], 1.0), max(counts["sequences"], 1.0)

        # 6a. actor: clipped surrogate (+ entropy bonus) (+ KL loss) (+ ptx) on each micro-batch.
        for i, part in enumerate(parts):
            mask = part.action_mask
            out = shared.actor_out if shared is not None else actor(
                part.sequences, part.attention_mask, num_scored=r, temperature=s.temperature, with_entropy=True,
                **blocked)
            pg_loss, pg_stats = ppo_policy_loss(
                out["logprobs"], part.old_logprobs, part.advantages, mask, clip_range=s.clip_range,
                dual_clip=s.dual_clip, num_tokens=tokens, clip_range_low=s.clip_range_low,
                clip_range_high=s.clip_range_high, ratio=s.importance_ratio, aggregation=s.loss_aggregation,
                num_sequences=sequences, max_length=s.max_length)
            loss = pg_loss
            if s.entropy_coef:
                loss = loss - s.entropy_coef * token_mean(out["entropy"], mask, num_tokens=tokens)
            if s.kl_loss_coef > 0:
                # The KL term as a loss (GRPO, Shao et al. 2024, eq. 3: k3, unbiased and >= 0), reduced
                # like the policy loss it is added to.
                kl = per_token_kl(out["logprobs"], part.ref_logprobs, mask, s.kl_loss_estimator)
                kl_loss = aggregate_loss(kl, mask, s.loss_aggregation, tokens, sequences, s.max_length)
                loss = loss + s.kl_loss_coef * kl_loss
                stats.add_total("kl_loss", kl_loss)
            if ptx_parts is not None:
                ptx = sft_token_loss(actor, ptx_parts[i], max(counts["ptx_tokens"], 1.0))
                loss = loss + s.ptx_coef * ptx
                stats.add_total("ptx_loss", ptx)
            steps_before = actor.global_steps
            actor.backward(loss)
            actor.step()
            if after_actor_step is not None and actor.global_steps > steps_before:
                after_actor_step()
            local_tokens = float(mask.sum())
            stats.add_total("policy_loss", pg_loss)
            stats.add("entropy", (out["entropy"].detach() * mask).sum() / max(local_tokens, 1.0), local_tokens)
            for k, v in pg_stats.items():
                stats.add(k, v, local_tokens)

        # 6b. critic: clipped value loss on the same minibatch.
        if critic is None:
            continue
        for part in parts:
            values = shared.values if shared is not None else critic(part.sequences, part.attention_mask,
                                                                      num_values=r)["values"]
            v_loss, v_stats = value_loss(values, part.old_values, part.returns, part.action_mask,
                                         value_clip=s.value_clip, num_tokens=tokens)
            critic.backward(v_loss)
            critic.step()
            stats.add_total("value_loss", v_loss)
            for k, v in v_stats.items():
                stats.add(f"value_{k}" if not k.startswith("value") else k, v, float(part.action_mask.sum()))
    out = stats.reduce(per=n_minibatches)
    out["minibatches"] = n_minibatches
    return out
