"""DeepSpeed JSON configs merged with a run's own values.

The JSON files in `configs/` say how to shard (ZeRO stage, offload, bucket sizes); the
run says how much to train (batch sizes, clipping, precision). Batch-size keys in the
JSON may be "auto" or absent: they are always derived from the run so that the two
can never disagree. An explicit value that contradicts the run is an error.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Dict

import torch

from .. import ds_configs
from ..errors import UserError

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
# Optimizer and scheduler are built by the trainers (AdamW, warm-up + decay), so a JSON
# file's own sections for them would silently be ignored; we refuse them instead.
REFUSED_KEYS = ("scheduler",)


def load_ds_config(path_or_dict: Any) -> Dict[str, Any]:
    """Read a DeepSpeed config from a JSON path, a shipped config's short name (`zero3`, see
    rlhf_ds/ds_configs) or a dict (copied). None gives ZeRO-3 defaults."""
    if path_or_dict is None:
        return {"zero_optimization": {"stage": 3}}
    if isinstance(path_or_dict, dict):
        return copy.deepcopy(path_or_dict)
    path = ds_configs.resolve(str(path_or_dict))
    with open(path, encoding="utf-8") as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: a DeepSpeed config must be a JSON object")
    for key in REFUSED_KEYS:
        if key in cfg:
            raise UserError(f"{path}: key {key!r} is not used by rlhf_ds (the schedule comes from the run "
                            f"config: warmup_ratio, lr_scheduler); remove it")
    return cfg


def zero_stage(cfg: Dict[str, Any]) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def resolve_precision(requested: str, device: torch.device) -> str:
    """'fp32', 'bf16' or 'fp16' from a config value; auto is bf16 where the device supports it."""
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {requested!r}")
    if requested != "auto":
        if device.type == "cpu" and requested == "fp16":
            raise ValueError("fp16 training is not supported on CPU; use fp32 or bf16")
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _set_batch(cfg: Dict[str, Any], key: str, value: int, source: str) -> None:
    old = cfg.get(key, "auto")
    if old not in ("auto", None) and int(old) != value:
        raise UserError(f"DeepSpeed config {source}: {key}={old} contradicts the run ({key}={value}); set it "
                        f"to \"auto\" or remove it, and size batches in the run config")
    cfg[key] = value


def training_config(base: Dict[str, Any], *, micro_batch_size: int, grad_accum: int, world_size: int,
                    precision: str, gradient_clipping: float, source: str = "") -> Dict[str, Any]:
    """A training engine's DeepSpeed config: `base` plus batch sizes, precision and clipping."""
    cfg = copy.deepcopy(base)
    _set_batch(cfg, "train_micro_batch_size_per_gpu", micro_batch_size, source)
    _set_batch(cfg, "gradient_accumulation_steps", grad_accum, source)
    _set_batch(cfg, "train_batch_size", micro_batch_size * grad_accum * world_size, source)
    cfg["gradient_clipping"] = float(gradient_clipping)
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": precision == "bf16"}
    cfg["fp16"] = {**cfg.get("fp16", {}), "enabled": precision == "fp16"}
    # We hand DeepSpeed a torch AdamW (no JIT-compiled op needed on CPU); DeepSpeed asks
    # for this flag before it accepts an optimizer it has not tested with ZeRO.
    cfg["zero_allow_untested_optimizer"] = True
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg


def inference_config(base: Dict[str, Any], *, micro_batch_size: int, world_size: int, precision: str,
                     offload_params: bool = False) -> Dict[str, Any]:
    """A reference/reward engine's config: ZeRO-3 partitioned (like training) with no optimizer state,
    optionally with parameters offloaded to CPU memory. On one rank without offload, a plain module
    (stage 0): a partition of one is the whole model, so ZeRO-3 would save nothing and only add its
    per-module hooks."""
    zero = {k: v for k, v in base.get("zero_optimization", {}).items()
            if k not in ("offload_optimizer",)}
    partitioned = zero_stage(base) == 3 and (world_size > 1 or offload_params)
    zero["stage"] = 3 if partitioned else 0
    if offload_params and zero["stage"] == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    elif "offload_param" in zero and not offload_params:
        zero.pop("offload_param")
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch_size * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return cfg


def offloads_optimizer(cfg: Dict[str, Any]) -> bool:
    dev = cfg.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return dev not in (None, "none")


def dtype_of(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
