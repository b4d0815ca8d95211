"""RL loop steps 1-2: prompts -> `n` sampled completions each, and dynamic sampling.

Layout of one rollout on one rank: `sequences` `(B, P + R)` = left-padded prompts `(B, P)`
followed by responses `(B, R)` that are right-padded after their first EOS. Every per-token
tensor of the loop is `(B, R)` and aligned with the response tokens; `action_mask` is 1 on
response tokens up to and including the first EOS. With `n` samples per prompt, rows
`g * n .. g * n + n - 1` are the samples of one prompt (a group), on the rank that drew it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional

import torch

from ..data.batch import TensorBatch, pad_right
from ..engine import Engine, GenerationSettings, HybridEngine, all_reduce_max, get_info, hf_generate
from .rl_metrics import reduce_sums


@dataclass
class Rollout(TensorBatch):
    sequences: torch.Tensor        # (B, P + R) prompt ids (left-padded) then response ids
    attention_mask: torch.Tensor   # (B, P + R) 1 on real prompt and response tokens
    action_mask: torch.Tensor      # (B, R) 1 on response tokens up to and including EOS
    ended: torch.Tensor            # (B,) bool: the response contains EOS (False: cut at max_new_tokens)

    @property
    def response_length(self) -> int:
        return self.action_mask.shape[1]

    @property
    def prompt_length(self) -> int:
        return self.sequences.shape[1] - self.response_length


class ResponseMasks(NamedTuple):
    sequences: torch.Tensor        # (B, P + R) with every token after the first EOS set to pad
    attention_mask: torch.Tensor   # (B, P + R)
    action_mask: torch.Tensor      # (B, R)
    ended: torch.Tensor            # (B,) bool


def response_masks(sequences: torch.Tensor, prompt_mask: torch.Tensor, eos_id: int, pad_id: int) -> ResponseMasks:
    """Split generated `(B, P + R)` ids into masks; tokens after the first EOS become pad."""
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
    return ResponseMasks(sequences=torch.cat([sequences[:, :p], response], dim=1),
                         attention_mask=torch.cat([prompt_mask.long(), action_mask], dim=1),
                         action_mask=action_mask, ended=ended)


def cat_rollouts(rollouts: List[Rollout], pad_id: int) -> Rollout:
    """One rollout from several whose prompt and response widths differ: prompts left-padded to the
    widest prompt, responses right-padded to the longest response."""
    p = max(r.prompt_length for r in rollouts)
    n = max(r.response_length for r in rollouts)

    def widen(t: torch.Tensor, prompt: int, value) -> torch.Tensor:
        left = torch.nn.functional.pad(t[:, :prompt], (p - prompt, 0), value=value)
        return torch.cat([left, pad_right(t[:, prompt:], n, value)], dim=1)

    return Rollout(sequences=torch.cat([widen(r.sequences, r.prompt_length, pad_id) for r in rollouts]),
                   attention_mask=torch.cat([widen(r.attention_mask, r.prompt_length, 0) for r in rollouts]),
                   action_mask=torch.cat([pad_right(r.action_mask, n, 0) for r in rollouts]),
                   ended=torch.cat([r.ended for r in rollouts]))


def generate_rollout(actor: Engine, hybrid: Optional[HybridEngine], input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, settings: GenerationSettings, eos_id: int, pad_id: int,
                     chunk: int, n_samples: int = 1) -> Rollout:
    """Sample `n_samples` responses for each of this rank's prompts, `chunk` rows per generate call,
    all from one gathered copy of the actor (the shards are gathered once per rollout, not per chunk).
    Each prompt's samples are contiguous rows."""
    if n_samples > 1:
        input_ids = input_ids.repeat_interleave(n_samples, dim=0)
        attention_mask = attention_mask.repeat_interleave(n_samples, dim=0)
    pieces = []
    with _generation_model(actor, hybrid) as (model, synced):
        for start in range(0, input_ids.shape[0], chunk):
            mask = attention_mask[start:start + chunk]
            out = hf_generate(model, input_ids[start:start + chunk], mask, settings, eos_id, pad_id,
                              synced_gpus=synced)
            m = response_masks(out, mask, eos_id, pad_id)
            pieces.append(Rollout(sequences=m.sequences, attention_mask=m.attention_mask,
                                  action_mask=m.action_mask, ended=m.ended))
    return cat_rollouts(pieces, pad_id)


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


# ---------------------------------------------------------------------------- dynamic sampling

@dataclass
class Draw:
    """One batch of prompts, sampled and scored (this rank's rows)."""
    rollout: Rollout
    scores: torch.Tensor           # (B,) the rewards advantages are computed from
    raw: torch.Tensor              # (B,) the combined source rewards before shaping
    parts: dict                    # source name -> SourceScores, for logging
    rows: List[int]                # (B,) the dataset index of each row's prompt


@dataclass
class Sampled:
    """What steps 1-3 hand on: exactly `groups * n` rows on every rank."""
    draw: Draw
    groups_seen: int               # groups drawn on this rank, kept or not
    zero_spread: int               # of those, groups whose rewards are all equal
    dropped: int                   # zero-spread groups left out of the batch
    extra_batches: int             # prompt batches drawn beyond the first


def zero_spread_groups(scores: torch.Tensor, n: int) -> torch.Tensor:
    """`(B / n,)` bool: the group's rewards are all equal, so a group baseline leaves no signal."""
    grouped = scores.view(-1, n)
    return (grouped == grouped[:, :1]).all(dim=1)


def _select(draw: Draw, groups: List[int], n: int, pad_id: int) -> Draw:
    rows = [g * n + k for g in groups for k in range(n)]
    return Draw(rollout=draw.rollout.index(rows), scores=draw.scores[rows], raw=draw.raw[rows],
                parts={k: type(v)(v.values[rows], v.applies[rows]) for k, v in draw.parts.items()},
                rows=[draw.rows[i] for i in rows])


def _cat_draws(draws: List[Draw], pad_id: int) -> Draw:
    parts = {}
    for name in draws[0].parts:
        kind = type(draws[0].parts[name])
        parts[name] = kind(torch.cat([d.parts[name].values for d in draws]),
                           torch.cat([d.parts[name].applies for d in draws]))
    return Draw(rollout=cat_rollouts([d.rollout for d in draws], pad_id), scores=torch.cat([d.scores for d in draws]),
                raw=torch.cat([d.raw for d in draws]), parts=parts, rows=[r for d in draws for r in d.rows])


def sample_groups(draw_batch: Callable[[], Draw], n: int, groups: int, dynamic: bool, max_extra: int,
                  pad_id: int) -> Sampled:
    """Steps 1-3, repeated when dynamic sampling asks for more (DAPO, Yu et al. 2025, section 3.2).

    Without dynamic sampling: one batch of `groups` prompts. With it, groups whose rewards are all
    equal are dropped (their group advantage is 0: they would only dilute the loss) and further
    prompt batches are drawn, on every rank in step (generation and reward-model forwards are
    collective), until every rank holds `groups` groups or `max_extra` extra batches were drawn;
    a rank still short then completes its batch with dropped groups, which add no gradient, so every
    rank trains on the same number of rows. Every draw moves the prompt sampler, so a resumed run
    draws exactly the same batches.
    """
    draws, kept, dropped_pool = [], [], []
    extra, seen, flat = 0, 0, 0
    while True:
        draw = draw_batch()
        draws.append(draw)
        flat_groups = list(range(flat, flat + len(draw.rows) // n))
        flat += len(flat_groups)
        seen += len(flat_groups)
        if not dynamic:
            kept += flat_groups
            break
        flat_zero = zero_spread_groups(draw.scores, n).tolist()
        for g, zero in zip(flat_groups, flat_zero):
            (dropped_pool if zero else kept).append(g)
        short = int(all_reduce_max(torch.tensor(float(max(0, groups - len(kept))))))
        if short == 0 or extra >= max_extra:
            break
        extra += 1
    merged = _cat_draws(draws, pad_id) if len(draws) > 1 else draws[0]
    zero = int(zero_spread_groups(merged.scores, n).sum())
    chosen = kept[:groups]
    fill = dropped_pool[:groups - len(chosen)]
    chosen = sorted(chosen + fill)
    return Sampled(draw=_select(merged, chosen, n, pad_id) if len(chosen) * n != len(merged.rows) else merged,
                   groups_seen=seen, zero_spread=zero, dropped=seen - len(chosen) if dynamic else 0,
                   extra_batches=extra)


def sampling_metrics(sampled: Sampled) -> Dict[str, float]:
    """Over all ranks: the share of drawn groups whose rewards were all equal, the groups dynamic
    sampling dropped, and the prompt batches it drew beyond the first."""
    t = reduce_sums({"zero": sampled.zero_spread, "seen": sampled.groups_seen, "dropped": sampled.dropped,
                     "extra": sampled.extra_batches})
    return {"zero_spread_share": t["zero"] / max(1.0, t["seen"]), "dropped_groups": t["dropped"],
            "extra_batches": t["extra"] / max(1, get_info().world_size)}
