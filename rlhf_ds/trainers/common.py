"""Pieces every trainer uses: batch plans, a resumable sharded sampler, the run context."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from ..config import RLHFConfig
from ..engine import DistInfo, all_reduce_max
from ..logging import MetricsLogger, PhaseTimer


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch splits: `world` ranks x `grad_accum` micro-batches x `micro` rows."""
    global_batch: int
    micro: int
    grad_accum: int
    world: int

    @property
    def per_rank(self) -> int:
        return self.micro * self.grad_accum


def plan_batches(global_batch: int, micro_batch: int, world: int, what: str) -> BatchPlan:
    """Split `global_batch` over `world` ranks in micro-batches of `micro_batch` (0: one per rank).
    Raises with the numbers when they do not divide."""
    if global_batch % world:
        raise ValueError(f"{what}: batch size {global_batch} is not divisible by the {world} ranks")
    per_rank = global_batch // world
    micro = micro_batch or per_rank
    if micro > per_rank or per_rank % micro:
        raise ValueError(f"{what}: {per_rank} rows per rank (batch {global_batch} / {world} ranks) cannot be "
                         f"split into micro-batches of {micro}; choose a micro_batch_size that divides it")
    return BatchPlan(global_batch=global_batch, micro=micro, grad_accum=per_rank // micro, world=world)


class ShardedSampler:
    """Deterministic, resumable order over a dataset, sharded by rank.

    Epoch e is the permutation of `torch.randperm(n, seed + e)`; global batch b of that epoch is
    its slice [b * G, (b + 1) * G) and rank r takes the r-th contiguous part. Only whole global
    batches are used, so every rank sees the same number of steps. The position (epoch, batch)
    is all that resume needs: nothing is replayed to get there.
    """

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int, shuffle: bool = True):
        if size < global_batch:
            raise ValueError(f"dataset of {size} records is smaller than one global batch of {global_batch}")
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0
        self.batch = 0
        self._epoch_order = (-1, None)   # (epoch, its permutation): drawn once per epoch, not per step

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.global_batch

    def _order(self, epoch: int) -> torch.Tensor:
        if self._epoch_order[0] != epoch:
            if self.shuffle:
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            else:
                order = torch.arange(self.size)
            self._epoch_order = (epoch, order)
        return self._epoch_order[1]

    def next_indices(self) -> List[int]:
        """This rank's indices of the next global batch (wrapping into the next epoch)."""
        if self.batch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch = 0
        order = self._order(self.epoch)
        start = self.batch * self.global_batch
        per_rank = self.global_batch // self.world
        mine = order[start + self.rank * per_rank: start + (self.rank + 1) * per_rank]
        self.batch += 1
        return mine.tolist()

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "size": self.size, "global_batch": self.global_batch}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if state.get("size") != self.size or state.get("global_batch") != self.global_batch:
            raise ValueError(f"cannot resume: the checkpoint's data had {state.get('size')} records in batches of "
                             f"{state.get('global_batch')}, this run has {self.size} in batches of "
                             f"{self.global_batch}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def eval_shard(size: int, rank: int, world: int) -> List[int]:
    """This rank's share of an evaluation set (strided, every record counted exactly once)."""
    return list(range(rank, size, world))


def eval_batches(dataset, micro: int, dist: DistInfo, device) -> Iterator[Tuple[object, bool]]:
    """This rank's evaluation batches of up to `micro` records, as (batch, counted). Every rank yields
    as many as the busiest one (ZeRO-3 forwards are collective); the extra ones, on a rank with fewer
    records or none at all, are padding forwards on record 0 and must not be counted."""
    idx = eval_shard(len(dataset), dist.rank, dist.world_size)
    n_batches = int(all_reduce_max(torch.tensor(math.ceil(len(idx) / micro))))
    for b in range(n_batches):
        rows = idx[b * micro:(b + 1) * micro]
        yield dataset.collate([dataset[i] for i in (rows or [0])]).to(device), bool(rows)


@dataclass
class RunContext:
    """What a trainer needs from the pipeline: config, where it runs, where it writes, how it logs."""
    cfg: RLHFConfig
    dist: DistInfo
    ds_config: Dict
    precision: str
    log: logging.Logger
    metrics: MetricsLogger
    tokenizer: object = None
    gold_reward_fn: Optional[Callable[[List[str], List[str]], List[float]]] = None
    timer: PhaseTimer = field(default_factory=PhaseTimer)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.save_dir, name)

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def progress_enabled(self) -> bool:
        return self.is_main and self.cfg.logging.progress


def resume_state(ctx: RunContext, ckpt, engines: Dict[str, object], stage: str, sampler: "ShardedSampler",
                 position_key: str = "step") -> Optional[Dict]:
    """With `--resume`, load `stage`'s latest checkpoint into `engines` and restore what every trainer
    shares: the data position, and the metrics log (lines past the checkpoint are dropped: they will
    be logged again). Returns the trainer state for the stage's own fields, or None on a fresh start."""
    if not ctx.cfg.resume:
        return None
    state = ckpt.load(engines)
    if state is None:
        return None
    sampler.load_state_dict(state["sampler"])
    ctx.metrics.truncate_after(stage, state[position_key])
    ctx.log.info(f"{stage}: resumed at {position_key} {state[position_key]} from {state['_tag']}")
    return state
