"""PPO step 6: `ppo_epochs` passes over the rollout in minibatches, actor then critic.

Losses average over the response tokens of the whole minibatch on all ranks (the count is
all-reduced once per minibatch), so the update does not depend on the number of ranks or
micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional

import torch

from ..engine import Engine, all_reduce_max, all_reduce_sum
from ..rl import ppo_policy_loss, token_mean, value_loss
from .ppo_experience import Experience
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


@dataclass
class StatSums:
    """Token-weighted sums of per-micro-batch statistics, reduced over ranks at the end. A statistic
    named `*_max` is a maximum and is reduced as one (a weighted mean of maxima is not a maximum)."""
    sums: Dict[str, float] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)
    maxima: Dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value, weight: float) -> None:
        v = float(value.detach().float().mean()) if torch.is_tensor(value) else float(value)
        if name.endswith("_max"):
            self.maxima[name] = max(self.maxima.get(name, v), v)
            return
        self.sums[name] = self.sums.get(name, 0.0) + v * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def reduce(self) -> Dict[str, float]:
        out = {}
        names = sorted(self.sums)
        if names:
            packed = torch.tensor([[self.sums[n], self.weights[n]] for n in names], dtype=torch.float64)
            packed = all_reduce_sum(packed)
            out = {n: float(s / w) if w > 0 else 0.0 for n, (s, w) in zip(names, packed.tolist())}
        peaks = sorted(self.maxima)
        if peaks:
            top = all_reduce_max(torch.tensor([self.maxima[n] for n in peaks], dtype=torch.float64))
            out.update(zip(peaks, top.tolist()))
        return out


def minibatches(n: int, size: int, epochs: int, seed: int) -> Iterator[torch.Tensor]:
    """Row indices of each minibatch: a fresh permutation of this rank's rollout per epoch, drawn from
    a generator seeded by (seed, epoch) so a resumed run shuffles exactly as the original."""
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n, generator=g)
        for start in range(0, n, size):
            yield order[start:start + size]


def ptx_token_count(parts) -> torch.Tensor:
    """Target tokens of ptx micro-batches on all ranks: the ptx loss is a global token mean too."""
    local = sum(float((b.labels[:, 1:] != -100).sum()) for b in parts)
    return all_reduce_sum(torch.tensor(local, dtype=torch.float64)).clamp(min=1.0)


def ppo_update(exp: Experience, actor: Engine, critic: Engine, s: UpdateSettings,
               ptx_batches: Optional[Callable[[], Iterator]] = None,
               after_actor_step: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Train actor and critic on one rollout; return token-weighted mean statistics over all ranks.

    `ptx_batches()` yields this rank's ptx micro-batches (`SFTBatch`), one per actor micro-batch."""
    stats = StatSums()
    r = exp.action_mask.shape[1]
    n_minibatches = 0
    for rows in minibatches(len(exp), s.minibatch_per_rank, s.ppo_epochs, s.seed):
        n_minibatches += 1
        mb = exp.index(rows)
        global_tokens = all_reduce_sum(mb.action_mask.sum().double()).clamp(min=1.0)
        parts = mb.split(s.micro)
        ptx_parts, ptx_tokens = None, None
        if ptx_batches is not None and s.ptx_coef > 0:
            # All of this minibatch's ptx micro-batches first: their global target count divides the
            # ptx loss, as the response-token count divides the policy loss (Engine.backward's rule).
            ptx_iter = ptx_batches()
            ptx_parts = [next(ptx_iter) for _ in parts]
            ptx_tokens = ptx_token_count(ptx_parts)

        # 6a. actor: clipped surrogate (+ entropy bonus) (+ ptx) on each micro-batch.
        for i, part in enumerate(parts):
            out = actor(part.sequences, part.attention_mask, num_scored=r, temperature=s.temperature,
                        with_entropy=True)
            pg_loss, pg_stats = ppo_policy_loss(out["logprobs"], part.old_logprobs, part.advantages,
                                                part.action_mask, clip_range=s.clip_range,
                                                dual_clip=s.dual_clip, num_tokens=global_tokens)
            entropy = token_mean(out["entropy"], part.action_mask, num_tokens=global_tokens)
            loss = pg_loss - s.entropy_coef * entropy
            local_tokens = float(part.action_mask.sum())
            if ptx_parts is not None:
                ptx = sft_token_loss(actor, ptx_parts[i], ptx_tokens)
                loss = loss + s.ptx_coef * ptx
                local_ptx = float((ptx_parts[i].labels[:, 1:] != -100).sum())
                stats.add("ptx_loss", float(ptx.detach()) * float(ptx_tokens) / max(local_ptx, 1.0), local_ptx)
            steps_before = actor.global_steps
            actor.backward(loss)
            actor.step()
            if after_actor_step is not None and actor.global_steps > steps_before:
                after_actor_step()
            # pg_loss is this rank's share (local sum / global tokens); logged as the local per-token
            # mean weighted by local tokens, so the reduced figure is the global per-token mean.
            stats.add("policy_loss", float(pg_loss.detach()) * float(global_tokens) / max(local_tokens, 1.0),
                      local_tokens)
            stats.add("entropy", (out["entropy"].detach() * part.action_mask).sum() / max(local_tokens, 1.0),
                      local_tokens)
            for k, v in pg_stats.items():
                stats.add(k, v, local_tokens)

        # 6b. critic: clipped value loss on the same minibatch.
        for part in mb.split(s.micro):
            values = critic(part.sequences, part.attention_mask, num_values=r)["values"]
            v_loss, v_stats = value_loss(values, part.old_values, part.returns, part.action_mask,
                                         value_clip=s.value_clip, num_tokens=global_tokens)
            critic.backward(v_loss)
            critic.step()
            local_tokens = float(part.action_mask.sum())
            stats.add("value_loss", float(v_loss.detach()) * float(global_tokens) / max(local_tokens, 1.0),
                      local_tokens)
            for k, v in v_stats.items():
                stats.add(f"value_{k}" if not k.startswith("value") else k, v, local_tokens)
    out = stats.reduce()
    out["minibatches"] = n_minibatches
    return out
