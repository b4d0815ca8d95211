"""Resumable checkpoints: DeepSpeed engine states plus the trainer's own state, written atomically.

Layout under `<save_dir>/checkpoints/<stage>/`:

    latest                   the tag of the newest COMPLETE checkpoint (replaced atomically)
    <tag>/<engine>/ckpt/     DeepSpeed's files for each trained engine (model, optimizer, scheduler)
    <tag>/<engine>/universal/  the same in DeepSpeed's universal format, made on the first resume on
                             another number of ranks (universal.py)
    <tag>/trainer_state.json step, data position, KL controller, ... (identical on every rank)
    <tag>/rng_rank<r>.pt     each rank's RNG states (they differ by rank)
    <tag>/extra_rank<r>.pt   per-rank tensors a trainer keeps (for example EMA shards)
    finished.json            written when the stage has finished and exported its outputs: its
                             result, step and configuration (a `--resume` then leaves them alone)

Every rank writes into `<tag>.partial/`; after a barrier rank 0 renames it to `<tag>` and only
then points `latest` at it. A crash at any moment leaves `latest` naming a checkpoint that
was completely written, so a resume never loads a torn one. Older checkpoints beyond
`keep` are deleted after the new one is in place.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from typing import Dict, List, Optional

import numpy as np
import torch

from ..errors import UserError
from ..files import replace_dir, write_text_atomic
from . import distributed as D
from . import universal
from .engines import Engine

LATEST = "latest"
FINISHED = "finished.json"
_ENGINE_TAG = "ckpt"


def rng_state() -> Dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_rng_state(state: Dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    def __init__(self, root: str, keep: int = 2, run_config: Optional[Dict] = None):
        self.root = root
        self.keep = max(1, keep)
        # The run's whole configuration, stored in every checkpoint so that a resume can compare it with
        # its own (trainers.common.resume_state sets it before the first save).
        self.run_config = run_config

    def latest_tag(self) -> Optional[str]:
        path = os.path.join(self.root, LATEST)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            tag = f.read().strip()
        if not tag or not os.path.isdir(os.path.join(self.root, tag)):
            # Never fall back to a fresh start silently: that is a resume that runs zero steps of the
            # old run and overwrites its outputs.
            raise FileNotFoundError(f"{path} names checkpoint {tag!r}, which is not in {self.root}; "
                                    f"restore it or delete {path} to start over")
        return tag

    def save(self, tag: str, engines: Dict[str, Engine], trainer_state: Dict,
             extra: Optional[Dict[str, torch.Tensor]] = None) -> str:
        """Collective: every rank must call it with the same tag."""
        info = D.get_info()
        final = os.path.join(self.root, tag)
        staging = final + ".partial"
        if info.is_main:
            os.makedirs(self.root, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
        D.barrier()
        for name, engine in engines.items():
            engine.save_checkpoint(os.path.join(staging, name), _ENGINE_TAG)
        torch.save(rng_state(), os.path.join(staging, f"rng_rank{info.rank}.pt"))
        if extra:
            torch.save(extra, os.path.join(staging, f"extra_rank{info.rank}.pt"))
        if info.is_main:
            # The rank count is recorded here, not by each trainer, so the resume check below always has it.
            state = {**trainer_state, "world_size": info.world_size}
            if self.run_config is not None:
                state["config"] = self.run_config
            write_text_atomic(os.path.join(staging, "trainer_state.json"), json.dumps(state, indent=2))
        D.barrier()
        if info.is_main:
            replace_dir(staging, final)
            write_text_atomic(os.path.join(self.root, LATEST), tag + "\n")
            self._prune(keep_tag=tag)
        D.barrier()
        return final

    def read_state(self, tag: Optional[str] = None) -> Optional[Dict]:
        """The trainer state of checkpoint `tag` (default: the latest) without loading any engine, with
        its tag under `_tag`; None when there is no checkpoint."""
        tag = tag or self.latest_tag()
        if tag is None:
            return None
        with open(os.path.join(self.root, tag, "trainer_state.json"), encoding="utf-8") as f:
            state = json.load(f)
        state["_tag"] = tag
        return state

    def load(self, engines: Dict[str, Engine], tag: Optional[str] = None) -> Optional[Dict]:
        """Restore engines and this rank's RNG; return the trainer state (None when there is nothing to
        resume).

        A checkpoint written by another number of ranks is loaded through DeepSpeed's universal format
        (universal.py): weights, Adam moments and step, and the LR schedule come back exactly. The
        trainer state (data position in global batches, KL controller, ...) does not depend on the
        world size. Random state: rank r takes the stream rank r saved; a rank the checkpoint did not
        have gets a new stream derived from rank 0's and its rank (`state["_rng"]` says which); the
        streams of ranks that are gone are dropped. Per-rank extras (`extra_rank<r>.pt`) hold
        ZeRO-3 partitions that cannot be re-cut here, so a resume of one under ZeRO-3 on another
        world size is refused (UserError); below ZeRO-3 they are whole tensors, the same on every
        rank, and rank 0's are used."""
        state = self.read_state(tag)
        if state is None:
            return None
        tag = state["_tag"]
        info = D.get_info()
        directory = os.path.join(self.root, tag)
        saved_world = state["world_size"]
        resharded = saved_world != info.world_size
        if resharded:
            _refuse_zero3_extras(directory, engines, saved_world, info.world_size)
        extra_rank = 0 if resharded else info.rank     # below ZeRO-3 every rank's extras are the same
        for name, engine in engines.items():
            if resharded:
                universal.load(engine, os.path.join(directory, name), _ENGINE_TAG)
            else:
                engine.load_checkpoint(os.path.join(directory, name), _ENGINE_TAG)
        state["_rng"] = _restore_rng(directory, info.rank, saved_world)
        state["_resharded_from"] = saved_world if resharded else None
        extra_path = os.path.join(directory, f"extra_rank{extra_rank}.pt")
        state["_extra"] = torch.load(extra_path, weights_only=False) if os.path.exists(extra_path) else None
        return state

    # A finished stage's record. Only rank 0 writes or removes it; every rank may read it.
    def write_finished(self, record: Dict) -> None:
        """Record that the stage finished (after its outputs are in place). Collective."""
        if D.get_info().is_main:
            os.makedirs(self.root, exist_ok=True)
            write_text_atomic(os.path.join(self.root, FINISHED), json.dumps(record, indent=2))
        D.barrier()

    def read_finished(self) -> Optional[Dict]:
        path = os.path.join(self.root, FINISHED)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def clear_finished(self) -> None:
        """A fresh start of the stage: the earlier run's record no longer describes what is on disk."""
        if D.get_info().is_main:
            path = os.path.join(self.root, FINISHED)
            if os.path.exists(path):
                os.remove(path)

    def tags(self) -> List[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted((d for d in os.listdir(self.root)
                       if os.path.isdir(os.path.join(self.root, d)) and not d.endswith(".partial")),
                      key=lambda d: os.path.getmtime(os.path.join(self.root, d)))

    def _prune(self, keep_tag: str) -> None:
        for d in os.listdir(self.root):
            if d.endswith(".partial") and d != keep_tag + ".partial":
                shutil.rmtree(os.path.join(self.root, d), ignore_errors=True)
        older = [t for t in self.tags() if t != keep_tag]
        for t in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(os.path.join(self.root, t), ignore_errors=True)


def _restore_rng(directory: str, rank: int, saved_world: int) -> str:
    """Set this rank's RNG from the checkpoint; returns where it came from ("saved" or "derived")."""
    if rank < saved_world:
        set_rng_state(torch.load(os.path.join(directory, f"rng_rank{rank}.pt"), weights_only=False))
        return "saved"
    # A rank the checkpoint never had: a stream that depends only on the checkpoint and the rank, so
    # that the resume is reproducible, and that differs from every other rank's.
    base = torch.load(os.path.join(directory, "rng_rank0.pt"), weights_only=False)["torch"]
    digest = hashlib.sha256(base.numpy().tobytes() + f"rank{rank}".encode()).digest()
    seed_everything(int.from_bytes(digest[:8], "little") % 2**63)
    return "derived"


def _refuse_zero3_extras(directory: str, engines: Dict[str, Engine], saved_world: int, world: int) -> None:
    """A UserError when the world size changed and the checkpoint's per-rank extras are ZeRO-3 partitions."""
    has_extras = any(os.path.exists(os.path.join(directory, f"extra_rank{r}.pt")) for r in range(saved_world))
    if has_extras and any(e.zero_stage == 3 for e in engines.values()):
        raise UserError(f"cannot resume {directory} (written by {saved_world} ranks) on {world}: it holds "
                        f"per-rank ZeRO-3 shards of trainer state (the EMA of ppo.ema_beta) that cannot be "
                        f"re-cut for another number of ranks; resume on {saved_world} ranks")
