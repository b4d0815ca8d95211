"""Export a trained engine's model as a Hugging Face directory (`save_pretrained` + tokenizer).

The weights are gathered bucket by bucket onto rank 0 (ZeRO-3 shards become whole tensors),
written to `<dir>.partial`, and renamed into place, so a crash during export never leaves a
directory that `from_pretrained` would load half-written.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Dict, Optional

import torch

from ..files import replace_dir
from ..models.lora import has_lora
from . import distributed as D
from .engines import Engine
from .lora_export import prepare_lora_export


def strip_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def export_pretrained(engine: Engine, attr: str, out_dir: str, tokenizer=None, metadata: Optional[Dict] = None) -> str:
    """Save `engine.module.<attr>` (a PreTrainedModel) with full weights to `out_dir`. Collective.

    A model with LoRA adapters is exported merged, with the adapter alone under `out_dir/adapter/` when
    base + adapter reproduces the model (see lora_export.py).
    """
    state = engine.full_state_dict()
    if D.get_info().is_main:
        hf_model = getattr(engine.module, attr)
        state = strip_prefix(state, f"{attr}.")
        if has_lora(hf_model):
            save_weights, metadata = prepare_lora_export(state, hf_model, tokenizer, metadata)
        else:
            save_weights = _save_pretrained(hf_model, state)
        del state
        write_model_dir(out_dir, save_weights, tokenizer, metadata)
    D.barrier()
    return out_dir


def _save_pretrained(hf_model, state: Dict[str, torch.Tensor]) -> Callable[[str], None]:
    return lambda staging: hf_model.save_pretrained(staging, state_dict=state, safe_serialization=True)


def write_model_dir(out_dir: str, save_weights: Callable[[str], None], tokenizer=None,
                    metadata: Optional[Dict] = None) -> None:
    """Write a model directory into `<out_dir>.partial` (weights through `save_weights(staging)`, then
    the tokenizer and `rlhf_ds.json`) and move it into place. One process only (rank 0)."""
    staging = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    save_weights(staging)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    if metadata is not None:
        with open(os.path.join(staging, "rlhf_ds.json"), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
    replace_dir(staging, out_dir)


def read_metadata(model_dir: str) -> Optional[Dict]:
    """The `rlhf_ds.json` written at export (None for directories we did not write)."""
    path = os.path.join(model_dir, "rlhf_ds.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
