"""Resuming on a different number of ranks: DeepSpeed's universal checkpoint format.

A ZeRO checkpoint stores each rank's partition of the fp32 weights and Adam moments, cut for the
world size that wrote it; DeepSpeed refuses to load it on another. `ds_to_universal` merges those
partitions into one file per parameter (`<dir>/zero/<name>/{fp32,exp_avg,exp_avg_sq}.pt`, plus the
optimizer's step and hyper-parameters), from which an engine of any world size takes its own slice
when its config says `checkpoint: {load_universal: true}`.

The conversion runs once, on rank 0, into `<engine dir>/universal/` beside the checkpoint it was made
from (written under `.partial` and renamed, so a crash never leaves a half-converted folder that a
later resume would trust); every rank then loads from it. It needs the checkpoint folder on a
filesystem that every rank sees, as checkpoints always do.

Below ZeRO (stage 0) the checkpoint holds the whole optimizer state in one file that every world
size reads as it is: no conversion.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil

from . import distributed as D

UNIVERSAL = "universal"


def universal_path(engine_dir: str) -> str:
    return os.path.join(engine_dir, UNIVERSAL)


def convert(engine_dir: str, tag: str) -> str:
    """Collective: rank 0 converts `<engine_dir>/<tag>` (a DeepSpeed ZeRO checkpoint) to the universal
    format unless that was done before; every rank returns the converted folder's path."""
    out = universal_path(engine_dir)
    if D.get_info().is_main and not os.path.isdir(out):
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        staging = out + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        # One worker: the converter's process pool would fork a copy of this rank (with its process
        # group and threads) per worker; the files are small next to a rank's own work.
        # inject_missing_state: a ZeRO-1/2 checkpoint of a model without Megatron's tensor-parallel
        # description lacks the (then trivial) `universal_checkpoint_info`, and the converter refuses
        # it; this adds the plain version record, which is all a model without tensor or pipeline
        # parallelism needs. ZeRO-3 checkpoints do not use it.
        args = argparse.Namespace(input_folder=os.path.join(engine_dir, tag), output_folder=staging,
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                  strict=True, inject_missing_state=True)
        # Its progress lines and bars are not the run's log (errors still raise).
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ds_to_universal(args)
        # It points a `latest_universal` file beside its output at the folder's (temporary) name; the
        # folder is always loaded by its own name here, so that pointer would only mislead.
        stray = os.path.join(engine_dir, "latest_universal")
        if os.path.exists(stray):
            os.remove(stray)
        os.replace(staging, out)
    D.barrier()
    return out


def load(engine, engine_dir: str, tag: str) -> None:
    """Load `engine` (an engines.Engine) from the checkpoint `<engine_dir>/<tag>` written by another
    world size: through the universal format under ZeRO, directly below it."""
    if engine.zero_stage == 0:
        engine.load_checkpoint(engine_dir, tag)
        return
    convert(engine_dir, tag)
    # DeepSpeed reads the switch from the engine's config at load time only; it is set for this one
    # load so that a later save/load of the same engine is an ordinary one.
    config = engine.ds._config
    before = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        engine.load_checkpoint(engine_dir, UNIVERSAL)
    finally:
        config.load_universal_checkpoint = before
