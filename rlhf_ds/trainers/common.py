"""Pieces every trainer uses: batch plans, a resumable sharded sampler, the run context, resume and the
end of a stage (publishing the best model, recording that the stage finished)."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from ..config import ConfigError, ResumeChange, RLHFConfig, build_config, resume_allowed, resume_changes
from ..engine import DistInfo, all_reduce_max, all_reduce_sum
from ..engine.checkpoint import FINISHED
from ..errors import DataError, UserError
from ..files import replace_dir
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
        raise UserError(f"{what}: batch size {global_batch} is not divisible by the {world} ranks")
    per_rank = global_batch // world
    micro = micro_batch or per_rank
    if micro > per_rank or per_rank % micro:
        raise UserError(f"{what}: {per_rank} rows per rank (batch {global_batch} / {world} ranks) cannot be "
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
            raise DataError(f"dataset of {size} records is smaller than one global batch of {global_batch}")
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
            raise UserError(f"cannot resume: the checkpoint's data had {state.get('size')} records in batches of "
                            f"{state.get('global_batch')}, this run has {self.size} in batches of "
                            f"{self.global_batch}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def reduce_sums(values: Dict[str, float]) -> Dict[str, float]:
    """Each named value summed over ranks (one all-reduce for all of them, in fp64)."""
    names = sorted(values)
    if not names:
        return {}
    total = all_reduce_sum(torch.tensor([float(values[n]) for n in names], dtype=torch.float64))
    return dict(zip(names, total.tolist()))


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
                 position_key: str = "step", config_scope: Optional[Iterable[str]] = None) -> Optional[Dict]:
    """With `--resume`, load `stage`'s latest checkpoint into `engines` and restore what every trainer
    shares: the data position, and the metrics log (lines past the checkpoint are dropped: they will
    be logged again). Returns the trainer state for the stage's own fields, or None on a fresh start.

    Call it on every start, before the first `ckpt.save`: it gives `ckpt` the run's configuration to
    store in each checkpoint, and on resume compares the stored one with this run's over the stage's
    scope (`config_scope`, default `config.RESUME_SCOPE[stage]`). A changed key outside
    `config.RESUME_ALLOWED` refuses the resume (ConfigError naming the key and both values, before any
    engine is loaded); an allowed one is applied and logged."""
    ckpt.run_config = ctx.cfg.to_dict()
    saved = ckpt.read_state() if ctx.cfg.resume else None
    changes = [] if saved is None else _check_resume_config(
        ctx, stage, saved.get("config"), os.path.join(ckpt.root, saved["_tag"]), config_scope)
    ckpt.clear_finished()   # the stage runs (again): an earlier finished record no longer holds
    if saved is None:
        return None
    for c in changes:
        ctx.log.info(f"{stage}: resuming with {c.key} changed from {_show(c.saved)} to {_show(c.now)} (applied)")
    state = ckpt.load(engines, saved["_tag"])
    if state.get("_resharded_from"):
        ctx.log.info(f"{stage}: the checkpoint was written by {state['_resharded_from']} rank(s), this run has "
                     f"{ctx.dist.world_size}: engines loaded through DeepSpeed's universal format, the data "
                     f"position carried over in global batches; ranks below {state['_resharded_from']} continue "
                     f"their random streams, any others start streams derived from rank 0's")
    sampler.load_state_dict(state["sampler"])
    ctx.metrics.truncate_after(stage, state[position_key])
    ctx.log.info(f"{stage}: resumed at {position_key} {state[position_key]} from {state['_tag']}")
    return state


def resume_preflight(ctx: RunContext, ckpt, stage: str, outputs: Sequence[str],
                     config_scope: Optional[Iterable[str]] = None) -> Optional[Dict]:
    """Call before building any engine. With `--resume`, the result that `stage` returned when it
    finished (see `mark_finished`): a finished stage is not run again, and its `outputs` stay exactly as
    they are (a re-launched job, such as a SLURM requeue, passes `--resume` to every stage). Otherwise
    None, once the configuration has been checked against the latest checkpoint's as in `resume_state`,
    so that a refused resume loads no model. For a finished stage `config.json` keeps the values its
    outputs were made with."""
    if not ctx.cfg.resume:
        return None
    record = ckpt.read_finished()
    if record is None:
        saved = ckpt.read_state()
        if saved is not None:   # allowed changes are logged by resume_state, which checks again
            _check_resume_config(ctx, stage, saved.get("config"), os.path.join(ckpt.root, saved["_tag"]),
                                 config_scope, warn=False)
        return None
    where = os.path.join(ckpt.root, FINISHED)
    gone = [p for p in outputs if not os.path.isdir(p)]
    if gone:
        raise FileNotFoundError(f"{stage} finished earlier ({where}), but its output {gone[0]} is gone; run "
                                f"without --resume to train the stage again")
    changes = _check_resume_config(ctx, stage, record.get("config"), where, config_scope)
    if changes:
        _record_used_config(ctx, changes)
        ctx.log.info(f"{stage}: the stage had finished, so nothing applies: " + "; ".join(
            f"{c.key} stays {_show(c.saved)} (asked {_show(c.now)})" for c in changes))
    ctx.log.info(f"{stage}: finished earlier at {record.get('position_key', 'step')} {record.get('position')}; "
                 f"--resume leaves its outputs as they are ({', '.join(outputs)})")
    return record["result"]


def mark_finished(ctx: RunContext, ckpt, stage: str, position: int, result: Dict,
                  position_key: str = "step") -> None:
    """Record, once the stage's outputs are in place, that it finished and what it returned. Collective."""
    ckpt.write_finished({"stage": stage, "position_key": position_key, "position": position, "result": result,
                         "config": ckpt.run_config if ckpt.run_config is not None else ctx.cfg.to_dict()})


def publish_best(out_dir: str, resumed: bool, last: Optional[str] = None) -> None:
    """Rank 0, at the end of a stage: the best model exported during training (`<out_dir>.best`) becomes
    `out_dir`, with the directory `last` (if given) moved into it as `last/`.

    A resumed run whose evaluations never beat the best one from before the checkpoint exported no
    `.best` of its own: that best was already published to `out_dir` by an earlier run, which is kept
    (only `last/` is replaced). Nothing is deleted before what replaces it exists."""
    best = out_dir + ".best"
    if os.path.isdir(best):
        target = best
    elif resumed and os.path.isfile(os.path.join(out_dir, "config.json")):
        target = out_dir
    else:
        raise FileNotFoundError(f"{best}: no best model was exported (no evaluation improved on the first "
                                f"one); {out_dir} is left as it was")
    if last is not None:
        replace_dir(last, os.path.join(target, "last"))
    if target == best:
        replace_dir(best, out_dir)


def _check_resume_config(ctx: RunContext, stage: str, saved: Optional[Dict], where: str,
                         scope: Optional[Iterable[str]], warn: bool = True) -> List[ResumeChange]:
    """The allowed changes between `saved` (a checkpoint's configuration) and this run's; raises
    ConfigError, naming every refused key with both values, when any change is not allowed."""
    if saved is None:
        if warn:
                ctx.log.warning(f"{stage}: {where} does not record its configuration (written by an older "
                            f"rlhf_ds); changes since then cannot be checked")
        return []
    changes = resume_changes(stage, saved, ctx.cfg.to_dict(), scope)
    refused = [c for c in changes if not c.allowed]
    if refused:
        _record_used_config(ctx, changes)   # config.json describes the run on disk, not this refused one
        raise ConfigError(
            f"cannot resume {stage} from {where}: " + "; ".join(
                f"{c.key} was {_show(c.saved)} there, {_show(c.now)} now" for c in refused)
            + f". Resume with the checkpoint's values or start over without --resume (a resume of {stage} may "
              f"change only {', '.join(resume_allowed(stage, scope))})")
    return changes


def _record_used_config(ctx: RunContext, changes: List[ResumeChange]) -> None:
    """Put the checkpoint's values of `changes` back into save_dir/config.json (rank 0), which the
    pipeline wrote with this run's values before the stage knew they would not be used."""
    if not ctx.is_main:
        return
    used = ctx.cfg.to_dict()
    for c in changes:
        section, _, key = c.key.rpartition(".")
        (used[section] if section else used)[key] = c.saved
    build_config(base=used, apply_demo_preset=False).save(os.path.join(ctx.cfg.save_dir, "config.json"))


def _show(value) -> str:
    return json.dumps(value)
