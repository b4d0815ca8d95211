"""The generation copy's storage: an empty, hook-free instance of a model's architecture, and
freeing it again. Shared by the hybrid engine (which releases the copy after each rollout) and
`merged_lora_copy` (which builds and fills it), so neither module imports the other."""
from __future__ import annotations

from typing import Optional

import torch


def release_storage(module: torch.nn.Module) -> None:
    """Free a generation copy's weights now. Dropping the last reference is not enough when the
    module sits in a reference cycle (Hugging Face models can), and `gc.collect()` costs ~0.25 s
    per call in a process that has imported transformers and deepspeed: more than the gather."""
    for t in list(module.parameters(recurse=True)) + list(module.buffers(recurse=True)):
        t.data = torch.empty(0, dtype=t.dtype, device=t.device)


def empty_copy(hf_model, device: torch.device, dtype: Optional[torch.dtype] = None):
    """An uninitialised instance of `hf_model`'s architecture: built on the meta device (so it costs
    nothing and never runs weight init), then given real but empty storage."""
    # The model's own class, not AutoModelForCausalLM: it also covers architectures the Auto class
    # does not know, and _from_config honours the dtype for every class.
    with torch.device("meta"):
        plain = type(hf_model)._from_config(hf_model.config, dtype=dtype or _param_dtype(hf_model))
    plain = plain.to_empty(device=device)
    plain.eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    if getattr(hf_model, "generation_config", None) is not None:
        plain.generation_config = hf_model.generation_config
    return plain


def _param_dtype(model) -> torch.dtype:
    for p in model.parameters():
        return getattr(p, "ds_tensor", p).dtype
    return torch.float32
