"""How much device memory a run needs, per rank, before it starts: weights, adapters, gradients,
optimizer states, activations, KV cache.

    python -m rlhf_ds.memory --config configs/examples/qlora_7b_single_gpu.yaml [--device-memory-gb 24]
                             [--model-config path/to/config.json] [--world-size N] [--stage ppo]

The pipeline runs the same estimate before it builds any engine and refuses, with the table,
a run whose estimate exceeds the GPU's memory (set RLHF_DS_SKIP_MEMORY_CHECK=1 to only warn).
On CPU it compares with the available RAM and only warns.

The memory model itself (what is counted, and how) is described in rlhf_ds/memory_estimate.py.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

from .lora_settings import ROLES
from .memory_estimate import (GiB, Architecture, Estimate, MemoryEstimateError, Plan, estimate,
                              plan_from_config, stage_plan)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OutOfMemoryRefusal(RuntimeError):
    """The estimate exceeds the device: raised before any engine is built, with the table."""


# ---------------------------------------------------------------------------- config files

def _read_json(path: str) -> Dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def resolve_ds_config(path: Optional[str]) -> Dict:
    if path is None:
        return {"zero_optimization": {"stage": 3}}
    from .ds_configs import resolve
    from .errors import PathNotFoundError

    try:
        return _read_json(resolve(path))   # a file, or a shipped config by name (zero3): from any directory
    except PathNotFoundError as e:
        raise MemoryEstimateError(str(e)) from None


def find_architecture(cfg, explicit: Optional[str] = None) -> Tuple[Architecture, str]:
    """The model's architecture and where it came from: an explicit config.json (or directory), the
    model directory, the Hugging Face cache (offline), or a shipped configs/examples/*_config.json
    whose `_name_or_path` names the model."""
    def load(path: str, origin: str):
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise MemoryEstimateError(f"memory estimate: no model config at {path}")
        return Architecture.from_hf_config(_read_json(file), name=origin), file

    if explicit:
        return load(explicit, explicit)
    name = cfg.model.sft_model_path or cfg.model.name_or_path
    if name is None:
        from .tasks.tiny_model import TINY_SHAPE
        from .tasks.tokenizer import DEFAULT_VOCAB_SIZE
        shape = {**TINY_SHAPE, "vocab_size": DEFAULT_VOCAB_SIZE, "model_type": cfg.model.arch,
                 "tie_word_embeddings": True}
        return Architecture.from_hf_config(shape, name="demo"), "the demo's tiny model (vocabulary at most " \
                                                                  f"{DEFAULT_VOCAB_SIZE})"
    if os.path.isdir(name):
        return load(name, name)
    for candidate in [name] + sorted(glob.glob(os.path.join(REPO, "configs", "examples", "*config*.json"))):
        if candidate == name:
            try:
                from transformers import AutoConfig
                c = AutoConfig.from_pretrained(name, local_files_only=True)
                return Architecture.from_hf_config(c.to_dict(), name=name), f"{name} (Hugging Face cache)"
            except Exception:
                continue
        try:
            data = _read_json(candidate)
        except (OSError, ValueError):
            continue
        if data.get("_name_or_path") == name:
            return Architecture.from_hf_config(data, name=name), os.path.relpath(candidate, REPO)
    raise MemoryEstimateError(f"memory estimate: no architecture for {name!r}: it is not a local directory, not in "
                              f"the Hugging Face cache and no configs/examples/*config*.json names it; pass "
                              f"--model-config path/to/config.json")


# ---------------------------------------------------------------------------- report

def _gib(x: float) -> str:
    return f"{x / GiB:8.2f}"


def format_estimate(est: Estimate, arch: Architecture, plan: Plan, device_bytes: Optional[float] = None,
                    origin: str = "") -> str:
    lora = plan.lora
    lines = [f"memory estimate, {est.stage.upper()} stage, per rank: {arch.name or arch.model_type} "
             f"({arch.params() / 1e9:.2f}B params{', from ' + origin if origin else ''})",
             f"  ZeRO-{plan.zero_stage}, {plan.world_size} rank(s), {plan.precision}"
             + (f", LoRA r={lora.r} on {', '.join(r for r in ROLES if r in lora.apply_to)}" if lora.r
                else ", full fine-tuning")
             + (f", {lora.quantization} base{' + double quant' if lora.double_quant else ''}"
                if lora.quantized else "")
             + (", gradient checkpointing" if plan.gradient_checkpointing else ""),
             f"  {'model':<14}{'component':<18}{'GiB':>8}  note"]
    for i in est.items:
        lines.append(f"  {i.model:<14}{i.component:<18}{_gib(i.nbytes)}  {i.note}")
    for name, items in est.phases.items():
        mark = "  <- peak" if name == est.peak_phase else ""
        lines.append(f"  phase {name}: {est.phase_total(name) / GiB:.2f} GiB{mark}")
        for i in items:
            lines.append(f"    {i.model:<14}{i.component:<16}{_gib(i.nbytes)}  {i.note}")
    if est.overhead:
        lines.append(f"  {'':<14}{'overhead':<18}{_gib(est.overhead)}  CUDA context, allocator slack")
    for n in est.notes:
        lines.append(f"  note: {n}")
    totals = est.by_component()
    lines.append("  by component: " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in totals.items() if v) + " (GiB)")
    verdict = ""
    if device_bytes:
        verdict = (f"fits in {device_bytes / GiB:.1f} GiB ({100 * est.peak / device_bytes:.0f}%)"
                   if est.peak <= device_bytes else f"EXCEEDS the device's {device_bytes / GiB:.1f} GiB")
    lines.append(f"  peak estimate: {est.peak / GiB:.2f} GiB ({est.peak_phase} phase)" + (f"; {verdict}" if verdict
                                                                                         else ""))
    return "\n".join(lines)


def estimate_run(cfg, ds_config: Dict, stages=("ppo",), world_size: int = 1, device_type: str = "cuda",
                 precision: Optional[str] = None, arch: Optional[Architecture] = None,
                 model_config: Optional[str] = None):
    """[(stage, Estimate, Plan)] and (arch, origin) for a run config."""
    origin = "given"
    if arch is None:
        arch, origin = find_architecture(cfg, model_config)
    base = plan_from_config(cfg, ds_config, world_size, device_type, precision)
    out = []
    for stage in stages:
        plan = stage_plan(base, cfg, stage, world_size)
        out.append((stage, estimate(arch, plan, stage, device_type), plan))
    return out, arch, origin


def check_before_run(cfg, ds_config: Dict, dist, log, stages, model_dir: Optional[str] = None,
                     precision: Optional[str] = None, device_memory: Optional[float] = None) -> None:
    """The pipeline's check: log the estimate of each stage; on a GPU refuse (OutOfMemoryRefusal, with the
    table) when one exceeds the device's memory; on CPU warn when it exceeds the available RAM.
    `device_memory` (bytes) stands for the GPU's total memory (tests)."""
    try:
        results, arch, origin = estimate_run(cfg, ds_config, stages, dist.world_size, dist.device.type, precision,
                                             model_config=model_dir)
    except MemoryEstimateError as e:
        log.info(f"{e}; memory check skipped")
        return
    refuse = dist.device.type == "cuda" or device_memory is not None
    if device_memory is not None:
        capacity, where = float(device_memory), "device memory"
    elif dist.device.type == "cuda":
        import torch
        capacity = float(torch.cuda.get_device_properties(dist.device).total_memory)
        where = f"GPU {torch.cuda.get_device_name(dist.device)}"
    else:
        try:
            import psutil
            capacity = float(psutil.virtual_memory().available) / max(1, dist.local_world_size)
            where = "available RAM per local rank"
        except ImportError:
            capacity, where = None, "RAM"
    for stage, est, plan in results:
        table = format_estimate(est, arch, plan, capacity, origin)
        log.debug(table)
        log.info(f"{stage}: memory estimate {est.peak / GiB:.2f} GiB per rank at the {est.peak_phase} phase"
                 + (f" ({100 * est.peak / capacity:.0f}% of the {where}, {capacity / GiB:.1f} GiB)" if capacity else "")
                 + " (python -m rlhf_ds.memory prints the table)")
        if capacity is None or est.peak <= capacity:
            continue
        message = (f"{stage}: the memory estimate {est.peak / GiB:.2f} GiB per rank exceeds the {where} "
                   f"({capacity / GiB:.2f} GiB):\n{table}\nLower the batch sizes (ppo.micro_batch_size, "
                   f"ppo.rollout_batch_size), enable model.gradient_checkpointing, use LoRA/QLoRA (lora.r, "
                   f"lora.quantization=nf4), or more ranks with ZeRO-3")
        if refuse and os.environ.get("RLHF_DS_SKIP_MEMORY_CHECK") != "1":
            raise OutOfMemoryRefusal(message + " (RLHF_DS_SKIP_MEMORY_CHECK=1 runs anyway)")
        log.warning(message)


def main(argv: Optional[List[str]] = None) -> int:
    from .config import ConfigError, load_config

    ap = argparse.ArgumentParser(prog="python -m rlhf_ds.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="run config (YAML/JSON); default: the demo")
    ap.add_argument("--deepspeed", help="DeepSpeed JSON (default: the run config's deepspeed.config)")
    ap.add_argument("--model-config", help="a Hugging Face config.json (or model directory) for the architecture")
    ap.add_argument("--device-memory-gb", type=float, help="device memory in GiB to compare with (default: the "
                    "local GPU's, if any)")
    ap.add_argument("--world-size", type=int, default=1, help="ranks (default 1)")
    ap.add_argument("--stage", default="all", choices=("all", "sft", "reward", "ppo"))
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="default: the config's (auto: bf16)")
    args, overrides = ap.parse_known_args(argv)
    try:
        cfg = load_config(args.config, overrides)
        ds = resolve_ds_config(args.deepspeed or cfg.deepspeed.config)
        stages = ("sft", "reward", "ppo") if args.stage == "all" else (args.stage,)
        results, arch, origin = estimate_run(cfg, ds, stages, args.world_size, "cuda", args.precision,
                                             model_config=args.model_config)
    except (ConfigError, MemoryEstimateError) as e:
        print(f"rlhf_ds.memory: {e}", file=sys.stderr)
        return 2
    capacity = args.device_memory_gb * GiB if args.device_memory_gb else None
    if capacity is None:
        try:
            import torch
            if torch.cuda.is_available():
                capacity = float(torch.cuda.get_device_properties(0).total_memory)
        except ImportError:
            pass
    worst = 0.0
    for stage, est, plan in results:
        print(format_estimate(est, arch, plan, capacity, origin))
        print()
        worst = max(worst, est.peak)
    if capacity and worst > capacity:
        print(f"rlhf_ds.memory: the largest stage needs {worst / GiB:.2f} GiB, more than {capacity / GiB:.2f} GiB",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
