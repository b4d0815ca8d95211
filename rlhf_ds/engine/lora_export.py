"""Export of a model trained with LoRA adapters: merged, and the adapter alone.

    <out_dir>/                    the base with W + (alpha / r) * B @ A merged in, full precision,
                                  `save_pretrained` format: AutoModelForCausalLM (or
                                  ...ForSequenceClassification) loads it without peft
    <out_dir>/adapter/            the adapter alone (adapter_config.json + adapter_model.safetensors):
                                  PeftModel.from_pretrained(base, "<out_dir>/adapter")

With a 4-bit base the merged copy is built on the DEQUANTISED base weights: that is the
function the adapters were trained against, so the export computes what the trained model
computed (merging into the original full-precision weights instead would add back the
quantisation error the adapters partly compensated). The adapter directory applies to the
base it was trained on: load that base with the same BitsAndBytesConfig to reproduce the
trained QLoRA model exactly; on a full-precision base it gives the merged export.

A scalar model (reward, critic) trains its `score` head with its adapters; the adapter
directory lists it in `modules_to_save`, so peft restores the head too.

Called by `export.export_pretrained` on rank 0 with the gathered state; that module gathers and
writes the directory (this one never imports it).
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Dict, Optional, Tuple

import torch

from ..models.lora import lora_layers
from ..models.quantization import is_quantized
from .lora_hybrid import active_adapter, merged_weight

ADAPTER_DIR = "adapter"
HEAD = "score"


def _is_scalar(hf_model) -> bool:
    return hasattr(hf_model, HEAD) and isinstance(getattr(hf_model, HEAD), torch.nn.Linear)


def _out_dtype(hf_model) -> torch.dtype:
    """The dtype of the model's full-precision parameters (its input embedding's)."""
    w = hf_model.get_input_embeddings().weight
    return getattr(w, "ds_tensor", w).dtype


def split_and_merge(state: Dict[str, torch.Tensor], hf_model) -> Tuple[Dict[str, torch.Tensor],
                                                                         Dict[str, torch.Tensor]]:
    """A gathered state dict of an adapted model (names relative to `hf_model`) -> (merged state dict in
    the plain model's names, adapter state dict in peft's file format)."""
    state = dict(state)
    dtype = _out_dtype(hf_model)
    merged, adapter = {}, {}
    for name, layer in lora_layers(hf_model):
        a = active_adapter(layer)
        w = state.pop(f"{name}.base_layer.weight")
        lora_a = state.pop(f"{name}.lora_A.{a}.weight")
        lora_b = state.pop(f"{name}.lora_B.{a}.weight")
        merged[f"{name}.weight"] = merged_weight(w, lora_a, lora_b, layer.scaling[a],
                                                 getattr(layer, "fan_in_fan_out", False)).to(dtype)
        bias = state.pop(f"{name}.base_layer.bias", None)
        if bias is not None:
            merged[f"{name}.bias"] = bias
        adapter[f"base_model.model.{name}.lora_A.weight"] = lora_a.contiguous()
        adapter[f"base_model.model.{name}.lora_B.weight"] = lora_b.contiguous()
    leftover = [k for k in state if "lora_" in k or ".base_layer." in k]
    if leftover:
        raise NotImplementedError(f"cannot export adapter parameters {leftover[:3]}: only LoRA on linear layers "
                                  f"is supported")
    merged.update(state)
    if _is_scalar(hf_model):
        for key in (f"{HEAD}.weight", f"{HEAD}.bias"):
            if key in state:
                adapter[f"base_model.model.{key}"] = state[key].contiguous()
    return merged, adapter


def plain_model(hf_model, merged: Dict[str, torch.Tensor]):
    """A non-quantised, adapter-free instance of `hf_model`'s class holding `merged` (no copy: the
    tensors are assigned), ready for `save_pretrained`."""
    config = copy.deepcopy(hf_model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    dtype = _out_dtype(hf_model)
    with torch.device("meta"):
        model = type(hf_model)._from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(merged, strict=False, assign=True)
    if unexpected:
        raise KeyError(f"merged state has keys the plain {type(model).__name__} lacks: {unexpected[:5]}")
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise KeyError(f"merged state misses parameters of {type(model).__name__}: {still_meta[:5]}")
    if getattr(hf_model, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(hf_model.generation_config)
    return model


def save_adapter(path: str, hf_model, adapter: Dict[str, torch.Tensor]) -> None:
    """The adapter in peft's directory format (PeftModel.from_pretrained(base, path) loads it)."""
    from safetensors.torch import save_file

    config = copy.deepcopy(hf_model.peft_config["default"])
    config.base_model_name_or_path = getattr(hf_model.config, "name_or_path", None) or \
        getattr(hf_model.config, "_name_or_path", None)
    config.inference_mode = True
    if _is_scalar(hf_model):
        config.modules_to_save = [HEAD]
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    save_file(adapter, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})


def prepare_lora_export(state: Dict[str, torch.Tensor], hf_model, metadata: Optional[Dict] = None
                        ) -> Tuple[Callable[[str], None], Optional[Dict]]:
    """(the function that writes the merged model and the adapter into a staging directory; `metadata`
    with its `lora` entry). `state`: the gathered state dict, names relative to `hf_model`. Rank 0 only."""
    merged, adapter = split_and_merge(state, hf_model)
    model = plain_model(hf_model, merged)
    if metadata is not None:
        layer = lora_layers(hf_model)[0][1]
        a = active_adapter(layer)
        metadata = {**metadata, "lora": {"r": layer.r[a], "alpha": layer.lora_alpha[a], "adapter": ADAPTER_DIR,
                                         "merged_into": "dequantised 4-bit base" if is_quantized(hf_model)
                                         else "base"}}

    def save_weights(staging: str) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        save_adapter(os.path.join(staging, ADAPTER_DIR), hf_model, adapter)

    return save_weights, metadata
