"""PPO steps 1-5: generate, score, shape rewards, GAE, whiten.

Layout of one rollout on one rank: `sequences` `(B, P + R)` = left-padded prompts `(B, P)`
followed by responses `(B, R)` that are right-padded after their first EOS. Every per-token
tensor below is `(B, R)` and aligned with the response tokens; `action_mask` is 1 on response
tokens up to and including the first EOS.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from ..data.batch import TensorBatch, pad_right
from ..engine import Engine, GenerationSettings, HybridEngine, all_reduce_sum, hf_generate


@dataclass
class Rollout(TensorBatch):
    sequences: torch.Tensor        # (B, P + R) prompt ids (left-padded) then response ids
    attention_mask: torch.Tensor   # (B, P + R) 1 on real prompt and response tokens
    action_mask: torch.Tensor      # (B, R) 1 on response tokens up to and including EOS
    ended: torch.Tensor            # (B,) bool: the response contains EOS

    @property
    def response_length(self) -> int:
        return self.action_mask.shape[1]


@dataclass
class Experience(TensorBatch):
    sequences: torch.Tensor        # (B, P + R)
    attention_mask: torch.Tensor   # (B, P + R)
    action_mask: torch.Tensor      # (B, R)
    old_logprobs: torch.Tensor     # (B, R) actor log-probs at rollout time
    ref_logprobs: torch.Tensor     # (B, R) reference-policy log-probs
    old_values: torch.Tensor       # (B, R) critic values at rollout time
    rewards: torch.Tensor          # (B, R) KL-shaped per-token rewards
    kl: torch.Tensor               # (B, R) per-token KL estimate
    advantages: torch.Tensor       # (B, R) GAE advantages (whitened when configured)
    returns: torch.Tensor          # (B, R) value targets
    scores: torch.Tensor           # (B,) reward-model scores after clipping/normalisation/penalty
    raw_scores: torch.Tensor       # (B,) reward-model scores as the model gave them


def response_masks(sequences: torch.Tensor, prompt_mask: torch.Tensor, eos_id: int, pad_id: int):
    """Split generated `(B, P + R)` ids into masks; tokens after the first EOS become pad.

    Returns (sequences, attention_mask `(B, P + R)`, action_mask `(B, R)`, ended `(B,)`)."""
    p = prompt_mask.shape[1]
    response = sequences[:, p:].clone()
    is_eos = response == eos_id
    ended = is_eos.any(dim=1)
    # Position of the first EOS (R when none): tokens at or before it count.
    r = response.shape[1]
    first_eos = torch.where(ended, is_eos.float().argmax(dim=1), torch.full_like(ended, r, dtype=torch.long))
    positions = torch.arange(r, device=response.device).unsqueeze(0)
    action_mask = (positions <= first_eos.unsqueeze(1)).long()
    response = torch.where(action_mask.bool(), response, torch.full_like(response, pad_id))
    sequences = torch.cat([sequences[:, :p], response], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), action_mask], dim=1)
    return sequences, attention_mask, action_mask, ended


def generate_rollout(actor: Engine, hybrid: Optional[HybridEngine], input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, settings: GenerationSettings, eos_id: int, pad_id: int,
                     chunk: int) -> Rollout:
    """Step 1: sample responses for this rank's prompts, `chunk` prompts per generate call, all from
    one gathered copy of the actor (the shards are gathered once per rollout, not once per chunk)."""
    pieces = []
    with _generation_model(actor, hybrid) as (model, synced):
        for start in range(0, input_ids.shape[0], chunk):
            ids = input_ids[start:start + chunk]
            mask = attention_mask[start:start + chunk]
            out = hf_generate(model, ids, mask, settings, eos_id, pad_id, synced_gpus=synced)
            pieces.append(response_masks(out, mask, eos_id, pad_id))
    r = max(p[2].shape[1] for p in pieces)
    p_len = input_ids.shape[1]
    seqs = torch.cat([pad_right(s, p_len + r, pad_id) for s, _, _, _ in pieces])
    attn = torch.cat([pad_right(a, p_len + r, 0) for _, a, _, _ in pieces])
    act = torch.cat([pad_right(m, r, 0) for _, _, m, _ in pieces])
    ended = torch.cat([e for _, _, _, e in pieces])
    return Rollout(sequences=seqs, attention_mask=attn, action_mask=act, ended=ended)


@contextlib.contextmanager
def _generation_model(actor: Engine, hybrid: Optional[HybridEngine]):
    """(model, synced_gpus) to generate with: the hybrid engine's hook-free copy, or the ZeRO engine's
    own module, whose ranks must then step together because every token all-gathers layers."""
    if hybrid is not None:
        with hybrid.generation_model() as model:
            yield model, False
        return
    actor.eval()
    try:
        yield actor.module.lm, actor.zero_stage == 3 and actor.world_size > 1
    finally:
        actor.train()


@torch.no_grad()
def score_rollout(rollout: Rollout, actor: Engine, ref: Engine, critic: Engine, reward: Engine, micro: int,
                  temperature: float):
    """Step 2: old and reference log-probs, values and scores, `micro` rows per forward.

    Every rank runs the same number of forwards (ZeRO-3 forwards are collective)."""
    r = rollout.response_length
    old_lp, ref_lp, values, scores = [], [], [], []
    for engine in (actor, critic):
        engine.eval()
    for part in rollout.split(micro):
        seqs, attn = part.sequences, part.attention_mask
        old_lp.append(actor(seqs, attn, num_scored=r, temperature=temperature)["logprobs"])
        ref_lp.append(ref(seqs, attn, num_scored=r, temperature=temperature)["logprobs"])
        values.append(critic(seqs, attn, num_values=r)["values"])
        scores.append(reward(seqs, attn)["scores"])
    for engine in (actor, critic):
        engine.train()
    return torch.cat(old_lp), torch.cat(ref_lp), torch.cat(values), torch.cat(scores)


def global_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8):
    """Whiten `x` `(B, R)` over masked entries of ALL ranks (mean and variance all-reduced), so the
    result does not depend on how the rollout was split. Masked entries stay 0."""
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
