"""DeepSpeed engines around 4-bit (bitsandbytes) models: what may and may not touch them.

See rlhf_ds/models/quantization.py for the measurements behind these rules:
- ZeRO-3 is refused (`check_stage`), stages 0-2 work;
- the model is quantised on its device at load time and is never moved or cast afterwards:
  `deepspeed.initialize` calls `module.to(device)` with no public way to skip it, so the
  engine builders pin the module's `to` while DeepSpeed holds it (`pinned_device`);
- a 4-bit weight is copied out (export, state dicts) by dequantising it where it lies,
  never with `Params4bit.to()`, which moves the live weight's quant_state along with the copy.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from ..models.quantization import is_4bit_param


class QuantizedStageError(ValueError):
    """A ZeRO stage that cannot hold a 4-bit model."""


def check_stage(name: str, stage: int) -> None:
    if stage == 3:
        raise QuantizedStageError(
            f"engine {name!r}: a 4-bit (QLoRA) model cannot be held at ZeRO-3 (ZeRO would partition the packed "
            f"bytes while every rank still loads the whole quantised model and keeps its quantisation constants, "
            f"and generation would need a dequantised copy). Use ZeRO stage 0, 1 or 2 (configs/qlora_single_gpu.json, "
            f"configs/zero2.json) or lora.quantization=none.")


def _devices_of(module: torch.nn.Module):
    return {t.device for t in list(module.parameters()) + list(module.buffers())}


@contextlib.contextmanager
def pinned_device(module: torch.nn.Module, device: torch.device):
    """While the block runs, `module.to(...)` only checks that everything already lies on `device`
    (and raises if not, or if a dtype cast is asked). DeepSpeed calls `module.to(device)` once in
    `deepspeed.initialize`; for a model quantised on that device it must be a no-op."""
    def to(*args, **kwargs):
        dev, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None:
            raise RuntimeError(f"refusing to cast a 4-bit model to {dtype}: it was quantised with its compute "
                               f"dtype at load time (lora.compute_dtype)")
        if dev is not None:
            target = torch.device(dev)
            for d in _devices_of(module):
                if d.type != target.type or (target.index is not None and d.index != target.index):
                    raise RuntimeError(f"refusing to move a 4-bit model from {d} to {target}: load it on its "
                                       f"device (rlhf_ds.models.lora does) instead of moving it")
        return module

    module.to = to                      # an instance attribute shadows nn.Module.to
    try:
        yield module
    finally:
        del module.to


def dequantize_param(p: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The full-precision `(out, in)` weight of a 4-bit parameter, computed on its device; the
    parameter and its quant_state are left as they are."""
    import bitsandbytes.functional as F

    state = p.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        raise RuntimeError("this 4-bit weight was repacked for CPU inference by bitsandbytes; load 4-bit models "
                           "through rlhf_ds.models.lora, which turns that repack off")
    w = F.dequantize_4bit(p.data, state)
    return w.to(dtype) if dtype is not None else w


def full_precision_cpu(p: torch.Tensor) -> torch.Tensor:
    """A CPU copy of a (gathered) parameter; 4-bit weights come out dequantised."""
    if is_4bit_param(p):
        return dequantize_param(p).to("cpu")
    return p.detach().to("cpu", copy=True)
