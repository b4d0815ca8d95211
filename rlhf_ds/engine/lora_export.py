"""Export of a model trained with LoRA adapters: merged, and the adapter alone when it suffices.

    <out_dir>/                    the base with W + (alpha / r) * B @ A merged in, full precision,
                                  `save_pretrained` format: AutoModelForCausalLM (or
                                  ...ForSequenceClassification) loads it without peft
    <out_dir>/adapter/            the adapter alone (adapter_config.json + adapter_model.safetensors
                                  + the tokenizer): PeftModel.from_pretrained(base, "<out_dir>/adapter")

With a 4-bit base the merged copy is built on the DEQUANTISED base weights: that is the
function the adapters were trained against, so the export computes what the trained model
computed (merging into the original full-precision weights instead would add back the
quantisation error the adapters partly compensated). The adapter directory applies to the
base it was trained on: load that base with the same BitsAndBytesConfig to reproduce the
trained QLoRA model exactly; on a full-precision base it gives the merged export.

What the adapter carries besides the LoRA matrices, so that base + adapter IS the trained model:
- a scalar model's (reward, critic) `score` head, which trains with the adapters: listed in
  `modules_to_save`, so peft restores it;
- when the vocabulary grew at load (a pad token added to the tokenizer), the input embeddings
  and an untied LM head, whole, under the base model's own names (peft's "save_embedding_layers"
  form: they load into the base's own modules). The base must first be resized to the adapter's
  tokenizer: `base.resize_token_embeddings(len(tokenizer))`, which `AutoPeftModelForCausalLM`
  does by itself from the tokenizer in the adapter directory.
When base weights trained too (`lora.only_optimize_lora=false`) no adapter can reproduce the
model: none is written, only the merged model. `rlhf_ds.json` says which, under `lora`.

Called by `export.export_pretrained` on rank 0 with the gathered state; that module gathers and
writes the directory (this one never imports it).
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..models.lora import BASE_VOCAB_ATTR, is_conv1d, lora_layers
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
    the plain model's names, adapter state dict in peft's file format: LoRA matrices and a scalar head)."""
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


def trained_base_parameters(hf_model) -> List[str]:
    """Parameters that trained but that an adapter cannot carry: neither LoRA matrices nor a scalar head
    (with `lora.only_optimize_lora=false`, every full-precision base weight)."""
    head = f"{HEAD}." if _is_scalar(hf_model) else None
    return [n for n, p in hf_model.named_parameters()
            if p.requires_grad and "lora_" not in n and not (head and n.startswith(head))]


def _module_name(hf_model, module) -> str:
    return next(n for n, m in hf_model.named_modules() if m is module)


def grown_embeddings(state: Dict[str, torch.Tensor], hf_model) -> Optional[Tuple[Dict[str, torch.Tensor], Dict]]:
    """When the vocabulary grew since the base was loaded: (the input embeddings and an untied LM head,
    in peft's file format, whole; what to record). None when it did not grow. A model not loaded by
    rlhf_ds (no record of its base's size) is taken to have grown: saving the rows is always correct."""
    inp = hf_model.get_input_embeddings()
    key = f"{_module_name(hf_model, inp)}.weight"
    rows = state[key].shape[0]
    base_rows = getattr(hf_model, BASE_VOCAB_ATTR, None)
    if base_rows == rows:
        return None
    keys = [key]
    out = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    if out is not None and out.weight is not inp.weight:          # tied: the LM head is the same tensor
        keys.append(f"{_module_name(hf_model, out)}.weight")
    saved = {f"base_model.model.{k}": state[k].contiguous() for k in keys}
    return saved, {"base_vocab_size": base_rows, "vocab_size": rows, "saved": keys,
                   "load": f"resize the base's embeddings to {rows} rows (len of the adapter's tokenizer) "
                           f"before PeftModel.from_pretrained; AutoPeftModelForCausalLM does it"}


def conv1d_layout(merged: Dict[str, torch.Tensor], hf_model, plain) -> Dict[str, torch.Tensor]:
    """`merged` with each weight that the plain model holds in a Conv1D (GPT-2's projections, stored
    (in, out)) but that `hf_model` holds in an (out, in) linear layer transposed into (in, out). That is
    every 4-bit one: transformers quantises a Conv1D as a bitsandbytes Linear4bit of the transposed weight
    (and peft adapts it as a plain linear layer). A full-precision Conv1D, adapted or not, is already in
    the plain layout (merged_weight transposes B @ A for it)."""
    trained = dict(hf_model.named_modules())
    out = dict(merged)
    for name, module in plain.named_modules():
        if not is_conv1d(module):
            continue
        held = trained.get(name)
        held = getattr(held, "base_layer", held)           # a LoRA layer: its base holds the weight
        key = f"{name}.weight"
        if held is not None and not is_conv1d(held) and key in out:
            out[key] = out[key].T.contiguous()
    return out


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
    merged = conv1d_layout(merged, hf_model, model)
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


def save_adapter(path: str, hf_model, adapter: Dict[str, torch.Tensor], tokenizer=None) -> None:
    """The adapter in peft's directory format (PeftModel.from_pretrained(base, path) loads it)."""
    from safetensors.torch import save_file

    config = copy.deepcopy(hf_model.peft_config["default"])
    config.base_model_name_or_path = getattr(hf_model.config, "name_or_path", None) or \
        getattr(hf_model.config, "_name_or_path", None)
    config.inference_mode = True
    if _is_scalar(hf_model):
        config.modules_to_save = [HEAD]
    elif config.task_type is None:
        config.task_type = "CAUSAL_LM"         # so AutoPeftModelForCausalLM knows the base's class
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    save_file(adapter, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def prepare_lora_export(state: Dict[str, torch.Tensor], hf_model, tokenizer=None, metadata: Optional[Dict] = None
                        ) -> Tuple[Callable[[str], None], Optional[Dict]]:
    """(the function that writes the merged model and, when it reproduces the model, the adapter into a
    staging directory; `metadata` with its `lora` entry). `state`: the gathered state dict, names relative
    to `hf_model`. Rank 0 only."""
    merged, adapter = split_and_merge(state, hf_model)
    trained_base = trained_base_parameters(hf_model)
    grown = None if trained_base else grown_embeddings(state, hf_model)
    if grown is not None:
        adapter.update(grown[0])
    model = plain_model(hf_model, merged)
    if metadata is not None:
        layer = lora_layers(hf_model)[0][1]
        a = active_adapter(layer)
        info = {"r": layer.r[a], "alpha": layer.lora_alpha[a],
                "merged_into": "dequantised 4-bit base" if is_quantized(hf_model) else "base",
                "adapter": None if trained_base else ADAPTER_DIR}
        if trained_base:
            info["adapter_omitted"] = (f"{len(trained_base)} base parameters trained besides the adapters "
                                       f"(lora.only_optimize_lora=false, e.g. {trained_base[0]}): an adapter "
                                       f"alone cannot reproduce the model; use the merged export")
        if grown is not None:
            info["adapter_embeddings"] = grown[1]
        metadata = {**metadata, "lora": info}

    def save_weights(staging: str) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        if not trained_base:
            save_adapter(os.path.join(staging, ADAPTER_DIR), hf_model, adapter, tokenizer)

    return save_weights, metadata
