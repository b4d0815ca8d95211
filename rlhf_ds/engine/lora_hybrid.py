"""The hybrid engine with LoRA adapters: what the generation model is, and why.

Full-precision base (LoRA):
    ZeRO-3: the generation copy is the plain BASE architecture filled with fused weights
    W + (alpha / r) * B @ A (transposed for a Conv1D, whose W is stored (in, out): GPT-2),
    gathered layer by layer (`merged_lora_copy`, the HybridEngine's
    merge_fn). Generation then costs exactly what it costs without adapters, and the
    training weights are never modified (no merge/unmerge round trip, which in bf16 would
    round the frozen base a little differently after every rollout).
    ZeRO-0/1/2: the engine's own model generates with the adapters unfused (two small extra
    matmuls per adapted layer and token). Fusing there would need a second copy of the
    weights, or an in-place merge whose unmerge drifts a bf16 base.

4-bit base (QLoRA; ZeRO-0/1/2 only):
    the peft model generates directly with the adapters unfused. Merging B @ A into NF4
    weights would re-quantise them: the fused model would differ from the trained one by up
    to a quantisation step per weight (far more than the adapters' own updates early in
    training), so the samples would not come from the policy being optimised. Unfused
    generation costs the adapters' extra matmuls per token; that is the trade.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from ..models.lora import lora_layers
from .engines import Engine
from .generation_copy import empty_copy


def active_adapter(layer) -> str:
    names = layer.active_adapters
    if len(names) != 1:
        raise NotImplementedError(f"rlhf_ds supports one active LoRA adapter per layer, found {names}")
    return names[0]


def merged_weight(base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float,
                  fan_in_fan_out: bool = False) -> torch.Tensor:
    """W + scaling * B @ A, computed in fp32, returned in fp32. With `fan_in_fan_out` (peft's flag for a
    Conv1D, whose W is (in, out)) the (out, in) product B @ A is transposed to W's layout."""
    delta = lora_b.float() @ lora_a.float()
    if fan_in_fan_out:
        delta = delta.T
    return base.float() + scaling * delta


def _units(hf_model) -> List[Tuple[str, List[Tuple[str, torch.nn.Parameter]], object]]:
    """Gather units: one per LoRA layer (its base weight, bias, A and B) and one per other parameter.
    Each is (plain name prefix, [(name, param)], layer or None)."""
    owned = set()
    units = []
    for name, layer in lora_layers(hf_model):
        a = active_adapter(layer)
        if getattr(layer, "use_dora", {}).get(a, False):
            raise NotImplementedError("DoRA adapters are not supported by the hybrid engine")
        params = [(f"{name}.weight", layer.base_layer.weight), ("A", layer.lora_A[a].weight),
                  ("B", layer.lora_B[a].weight)]
        if getattr(layer.base_layer, "bias", None) is not None:
            params.append((f"{name}.bias", layer.base_layer.bias))
        for _, p in params:
            owned.add(id(p))
        units.append((name, params, layer))
    for n, p in hf_model.named_parameters():
        if id(p) not in owned:
            units.append((n, [(n, p)], None))
    return units


def _unit_buckets(units, bucket_mb: float):
    limit = bucket_mb * 2**20 if bucket_mb and bucket_mb > 0 else float("inf")
    bucket, size = [], 0
    for unit in units:
        nbytes = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for _, p in unit[1])
        if bucket and size + nbytes > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append(unit)
        size += nbytes
    if bucket:
        yield bucket


def merged_lora_copy(engine: Engine, plain=None, bucket_mb: float = 0.0):
    """A hook-free copy of the actor's BASE architecture whose adapted layers hold W + s * B @ A,
    gathered from the ZeRO-3 shards a bucket of layers at a time; every other parameter is copied
    as it is (a model without adapters is copied whole). Names are matched with
    `remove_duplicate=False` so tied weights are filled under both names; buffers (rotary tables,
    never partitioned) are copied directly. The HybridEngine's default merge_fn."""
    hf_model = engine.module.lm
    if plain is None:
        plain = empty_copy(hf_model, engine.device)
    targets: Dict[str, torch.Tensor] = dict(plain.named_parameters(remove_duplicate=False))
    aliases: Dict[int, list] = {}
    for name, p in hf_model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)

    def target(name):
        if name not in targets:
            raise KeyError(f"hybrid engine: parameter {name!r} has no counterpart in the generation copy of "
                           f"{type(hf_model).__name__}")
        return targets[name]

    with torch.no_grad():
        for bucket in _unit_buckets(_units(hf_model), bucket_mb):
            with engine.gathered([p for _, params, _ in bucket for _, p in params]):
                for name, params, layer in bucket:
                    if layer is None:
                        (_, p), = params
                        for alias in aliases[id(p)]:
                            target(alias).copy_(p.data)
                        continue
                    a = active_adapter(layer)
                    named = dict(params)
                    w = merged_weight(named[f"{name}.weight"].data, named["A"].data, named["B"].data,
                                      layer.scaling[a], getattr(layer, "fan_in_fan_out", False))
                    target(f"{name}.weight").copy_(w)
                    if f"{name}.bias" in named:
                        target(f"{name}.bias").copy_(named[f"{name}.bias"].data)
        plain_buffers = dict(plain.named_buffers())
        for name, b in hf_model.named_buffers():
            if name in plain_buffers:
                plain_buffers[name].copy_(b.data)
    return plain
