"""Process-group setup and the few collectives the trainers need.

One code path for a laptop CPU and a GPU cluster: nccl when CUDA is used, gloo otherwise.
Works under the deepspeed launcher, torchrun, SLURM (srun sets SLURM_PROCID) or as a
plain `python script.py` (a world of one). Collectives wait at most RLHF_DS_COLLECTIVE_TIMEOUT_S
seconds, and a failed one names the rank that stopped (liveness.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from . import liveness


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO: DistInfo | None = None


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


def choose_device(preference: str = "auto") -> str:
    """'cuda' or 'cpu' from a config value auto/cpu/cuda; an explicit cuda without CUDA is an error."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def _skip_shared_memory_allreduce_op() -> None:
    """Keep DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce at init.

    That op only serves `inference_all_reduce` (DeepSpeed's tensor-parallel inference), which
    nothing here calls; the backend falls back to the process group without it. Building it
    compiles torch's C++ headers: minutes on a 2-core machine, run by every rank of the first
    launch on a fresh machine, and a launch killed mid-build leaves a lock file on which every
    later launch waits forever. Marking the op incompatible is the switch DeepSpeed itself reads.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Initialise (once) the default process group and return where this rank runs."""
    global _INFO
    if _INFO is not None:
        return _INFO
    import deepspeed  # the engine package is the only one that imports deepspeed

    kind = choose_device(device_preference)
    # SLURM without a launcher: map its variables onto the ones torch.distributed reads.
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    world = _env_int("WORLD_SIZE", default=1)
    local_rank = _env_int("LOCAL_RANK", default=0)
    local_world = _env_int("LOCAL_WORLD_SIZE", "LOCAL_SIZE", default=min(world, max(1, torch.cuda.device_count()))
                           if kind == "cuda" else world)
    backend = "nccl" if kind == "cuda" else "gloo"
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        # Ranks on one machine share its cores; oversubscribing threads makes every rank slower.
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // max(1, local_world)))
    timeout = liveness.collective_timeout()
    if not dist.is_initialized():
        if kind == "cpu":
            _skip_shared_memory_allreduce_op()
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout)
    if dist.get_world_size() > 1:
        # A dead or unreachable peer ends this rank within `timeout`, with a line naming it (liveness.py).
        liveness.start(dist.get_rank(), dist.get_world_size(), os.environ["MASTER_ADDR"],
                       int(os.environ["MASTER_PORT"]), timeout.total_seconds())
    _INFO = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                     local_world_size=local_world, device=device, backend=backend)
    return _INFO


def shutdown_distributed() -> None:
    """Wait for every rank, then tear the process group down.

    A rank that exits while gloo's threads still hold connections to a slower peer can abort
    ("terminate called without an active exception", exit -6) even though its work is done.
    """
    global _INFO
    liveness.stop()
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
    _forget_deepspeed_groups()
    _INFO = None


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches groups it derived from the world (its clone of the world group, expert
    and all-to-all groups, a device mesh). Once the world is destroyed they are dead handles, and
    the next engine in this process (a second pipeline, a notebook, a test run) fails with "Group
    ... is not registered"; forget them so that they are derived again from the new world."""
    from deepspeed.utils import groups

    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "mesh_device"):
        if hasattr(groups, name):
            setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        cache = getattr(groups, name, None)
        if isinstance(cache, dict):
            cache.clear()


def get_info() -> DistInfo:
    if _INFO is None:
        raise RuntimeError("call rlhf_ds.engine.init_distributed() first")
    return _INFO


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _all_reduce(x: torch.Tensor | float, op) -> torch.Tensor:
    """`op` over ranks, as a new tensor (the input is left unchanged); Python numbers become fp64."""
    t = torch.as_tensor(x, dtype=torch.float64 if not torch.is_tensor(x) else None).clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        moved = t.to(get_info().device)
        dist.all_reduce(moved, op=op)
        t = moved.to(t.device)
    return t


def all_reduce_sum(x: torch.Tensor | float) -> torch.Tensor:
    """Sum over ranks (a new tensor; the input is left unchanged)."""
    return _all_reduce(x, dist.ReduceOp.SUM)


def all_reduce_mean(x: torch.Tensor | float) -> torch.Tensor:
    world = dist.get_world_size() if dist.is_initialized() else 1
    return all_reduce_sum(x) / world


def all_reduce_max(x: torch.Tensor | float) -> torch.Tensor:
    """Maximum over ranks (a new tensor; the input is left unchanged)."""
    return _all_reduce(x, dist.ReduceOp.MAX)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
