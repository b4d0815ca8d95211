"""RL loop step 3: rewards, only through the reward-source interface (rlhf_ds/rewards/base.py).

The loop builds a list of (source, weight) once (`build_reward_sources`), turns each batch of
completions into a `RewardBatch` and lets `combine` add the sources up; it never asks where a
reward came from. Each source's own mean is logged as `reward/<name>`. The combined reward is
then shaped as configured: running normalisation, clipping, a fixed score for responses
without EOS, and DAPO's soft overlong penalty.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..data.records import PromptRecord
from ..rewards import (RewardBatch, RewardSource, SourceScores, columns_from_meta, combine_on_every_rank,
                       needs_reward_model, source_metrics, sources_from_config)
from ..rewards.reward_model import RewardModelSource
from ..rl import RunningMoments
from ..rl.overlong import overlong_penalty
from .rl_metrics import reduce_sums
from .rl_sampling import Rollout

Sources = List[Tuple[RewardSource, float]]


def uses_reward_model(cfg) -> bool:
    """Whether a configured source is the trained reward model: only then is one loaded."""
    return needs_reward_model(cfg.rewards.sources)


def build_reward_sources(ctx, reward_engine, micro_batch: int) -> Sources:
    """The (source, weight) list of this run, from `rewards.sources`: the reward model (weight 1) unless
    the config names others (Python functions, HTTP endpoints; rlhf_ds/rewards/)."""
    return sources_from_config(ctx.cfg.rewards.sources,
                               model_source=(lambda: RewardModelSource(reward_engine, micro_batch))
                               if reward_engine is not None else None)


def last_user_text(record: PromptRecord) -> str:
    """What the user asked: the last user turn (the whole last message when there is none)."""
    users = [m.content for m in record.messages if m.role == "user"]
    return users[-1] if users else record.messages[-1].content


def decode_responses(tokenizer, rollout: Rollout) -> List[str]:
    out = []
    for ids, mask in zip(rollout.sequences[:, rollout.prompt_length:], rollout.action_mask):
        out.append(tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True))
    return out


def reward_batch(tokenizer, rollout: Rollout, records: Sequence[PromptRecord]) -> RewardBatch:
    """The `RewardBatch` of a rollout whose row i answers `records[i]` (a prompt sampled n times
    appears n times): prompts from the last user turn, columns from the records' `meta`."""
    return RewardBatch(prompts=[last_user_text(r) for r in records], completions=decode_responses(tokenizer, rollout),
                       columns=columns_from_meta([r.meta for r in records]), sequences=rollout.sequences,
                       attention_mask=rollout.attention_mask, action_mask=rollout.action_mask, ended=rollout.ended)


def shape_scores(raw: torch.Tensor, rollout: Rollout, p, moments: Optional[RunningMoments],
                 max_new_tokens: int) -> torch.Tensor:
    """Combined rewards -> the scores the loop optimises: normalise (running moments over all ranks),
    clip to [-c, c], give responses without EOS the fixed `no_eos_penalty`, add DAPO's soft overlong
    penalty (Yu et al. 2025, eq. 13) over the last `overlong_buffer` tokens before the limit."""
    scores = raw.float()
    if moments is not None:
        t = reduce_sums({"sum": float(scores.sum()), "sum_sq": float((scores.double() ** 2).sum()),
                         "count": float(len(scores))})
        mean = t["sum"] / t["count"]
        moments.update_from_moments(t["count"], mean, max(0.0, t["sum_sq"] - t["count"] * mean * mean))
        std = moments.std if moments.count > 1 else 1.0
        scores = (scores - moments.mean) / max(std, 1e-6)
    if p.reward_clip is not None:
        scores = scores.clamp(-p.reward_clip, p.reward_clip)
    ended = rollout.ended.to(scores.device)
    if p.no_eos_penalty is not None:
        scores = torch.where(ended, scores, torch.full_like(scores, float(p.no_eos_penalty)))
    if p.overlong_buffer > 0:
        lengths = rollout.action_mask.sum(dim=1).to(scores.device)
        scores = scores + overlong_penalty(lengths, max_new_tokens, p.overlong_buffer, p.overlong_penalty)
    return scores


def score_rollout_rewards(sources: Sources, tokenizer, rollout: Rollout, records: Sequence[PromptRecord]
                          ) -> Tuple[torch.Tensor, Dict[str, SourceScores]]:
    """`(B,)` combined rewards of the rollout's completions and each source's own scores. Every rank
    calls it in step: a reward model's forward is collective, and a source that fails on one rank
    stops every rank (rewards/collective.py)."""
    return combine_on_every_rank(sources, reward_batch(tokenizer, rollout, records))


def source_means(parts: Dict[str, SourceScores]) -> Dict[str, float]:
    """`reward/<name>`: each source's mean over the rows it applies to, over all ranks."""
    return source_metrics(parts)
