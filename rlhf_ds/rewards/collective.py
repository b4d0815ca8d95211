"""The two steps of scoring that involve every rank: agreeing that a source failed, and the
per-source means that are logged.

Sources from code run on each rank's own rows, so a function can fail on rank 1 while rank 0's
rows are fine. If rank 1 then stopped alone, rank 0 would wait forever in the next collective
(or die with an unrelated gloo error). `combine_on_every_rank` therefore lets every source run on
every rank (a reward-model source's forward is collective and must not be skipped by one rank),
then all ranks learn whether any failed and raise the same `RewardSourceError`, so the run stops
with one line and exit status 2 everywhere.

`dist` is anything with `get_info` (raising RuntimeError without a process group),
`all_reduce_sum`, `all_reduce_max` and `broadcast_object`, as `rlhf_ds.engine.distributed` (the
default); a single process needs no process group.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from .base import RewardBatch, RewardSource, RewardSourceError, SourceScores, combine


def _default_dist():
    from ..engine import distributed
    return distributed


def _rank_and_world(dist) -> Tuple[int, int]:
    try:
        info = dist.get_info()
    except RuntimeError:           # no process group: one process
        return 0, 1
    return info.rank, info.world_size


class _Guarded:
    """A source whose RewardSourceError is kept for later instead of raised, the row scored 0."""

    def __init__(self, source: RewardSource, errors: List[RewardSourceError]):
        self.source, self.errors, self.name = source, errors, source.name

    def __call__(self, batch: RewardBatch) -> SourceScores:
        try:
            return self.source(batch)
        except RewardSourceError as e:
            self.errors.append(e)
            return SourceScores(torch.zeros(len(batch)), torch.zeros(len(batch), dtype=torch.bool))


def combine_on_every_rank(sources: Sequence[Tuple[RewardSource, float]], batch: RewardBatch, dist=None
                          ) -> Tuple[torch.Tensor, Dict[str, SourceScores]]:
    """`base.combine` on this rank's rows; if a source failed on any rank, every rank raises that
    failure (the lowest failing rank's first error, its rank named)."""
    dist = dist or _default_dist()
    errors: List[RewardSourceError] = []
    total, parts = combine([(_Guarded(s, errors), w) for s, w in sources], batch)
    rank, world = _rank_and_world(dist)
    if world == 1:
        if errors:
            raise errors[0]
        return total, parts
    # One small all-reduce per batch when nothing failed: the lowest failing rank, as -(rank + 1).
    flag = float(dist.all_reduce_max(torch.tensor(-(rank + 1.0) if errors else -float(world + 1),
                                                  dtype=torch.float64)))
    if flag > -(world + 1):
        src = int(-flag) - 1
        e = dist.broadcast_object(errors[0] if errors else None, src=src)
        raise RewardSourceError(e.source, e.message, e.row, rank=src)
    return total, parts


def source_metrics(parts: Dict[str, SourceScores], dist=None) -> Dict[str, float]:
    """`reward/<name>`: each source's mean over the rows it applies to on all ranks (left out when
    it applies to none), and `reward/<name>/applies`: the share of rows it applies to. One
    all-reduce for all sources."""
    dist = dist or _default_dist()
    names = list(parts)
    if not names:
        return {}
    local = torch.tensor([[float(torch.where(s.applies, s.values, torch.zeros_like(s.values)).double().sum()),
                           float(s.applies.sum()), float(s.applies.numel())] for s in parts.values()],
                         dtype=torch.float64)
    sums = dist.all_reduce_sum(local)
    out: Dict[str, float] = {}
    for name, (total, applied, rows) in zip(names, sums.tolist()):
        if applied > 0:
            out[f"reward/{name}"] = total / applied
        out[f"reward/{name}/applies"] = applied / rows if rows else 0.0
    return out

