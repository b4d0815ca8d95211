"""QLoRA's frozen base: 4-bit NF4/FP4 weights through bitsandbytes, and how DeepSpeed may hold them.

What was measured (DeepSpeed 0.19.8, bitsandbytes 0.50.2, peft 0.21.2, transformers 5.23,
CPU with gloo, 1 and 2 ranks; tests/lora/ keeps each finding tested):

* ZeRO-0, 1 and 2 hold a 4-bit model with LoRA adapters and train only the adapters, when
  the model is placed on its device BEFORE `deepspeed.initialize` and nothing casts or
  moves it afterwards. `deepspeed.initialize` calls `module.to(device)` (there is no public
  switch; `dont_change_device` exists only on the engine class), and `Params4bit.to()`
  moves the weight's `quant_state` IN PLACE, so a stray move or copy of a quantised tensor
  drags the live model's quantisation constants along. rlhf_ds therefore never calls
  `.to()` on a 4-bit model: the engine pins the module's `to` to a check that everything
  already sits on the device (`rlhf_ds.engine.quantized.pinned_device`), and gathering a
  4-bit weight for export dequantises it where it lies
  (`rlhf_ds.engine.quantized.dequantize_param`).
* ZeRO-3 is refused for a 4-bit base. A training step does run at stage 3 in this version
  (ZeRO flattens and partitions the packed uint8 bytes, and the log-probs match an
  unsharded model on 2 ranks), but nothing is gained and two things are lost: each rank
  first loads the whole quantised model (no sharded loading), the quantisation constants
  stay replicated, the hybrid engine has no hook-free 4-bit copy to generate with (it would
  have to dequantise the whole model, undoing QLoRA's saving, or run ZeRO's per-token
  gathers), and the combination is untested on NCCL. A 4-bit 7B model is ~3.9 GB: one
  GPU holds it, and ZeRO-2 shards the adapters' optimizer states when there are several.
* bitsandbytes' CPU backend repacks a Linear4bit weight into an inference-only layout the
  first time it runs in eval mode without gradients (`_convert_weight_packed_for_cpu`,
  for AVX512-BF16 CPUs). After that, training forwards return no gradient through the base
  weight (gradients to earlier layers' adapters are silently lost) and every output moves
  by ~0.3% (the block scales become bf16). PPO does exactly this (scoring under no_grad,
  then training), so `disable_cpu_repack` turns the repack off on every 4-bit layer. GPUs
  never take that path.
* On CPU, transformers leaves a 4-bit model's full-precision tensors (embeddings, norms, heads)
  as views of the memory-mapped checkpoint, which keeps the whole file mapped with every page
  quantisation read (~the fp32 checkpoint per model in RSS); the loader copies them out
  (`rlhf_ds.models.lora.own_cpu_tensors`).
* GPT-2's projections are transformers' `Conv1D` (weight stored (in, out)). transformers quantises
  each as a Linear4bit of the transposed (out, in) weight, so the 4-bit model computes the same
  function and peft adapts it as an ordinary linear layer (no fan_in_fan_out); only the merged
  export must transpose those weights back for the plain GPT-2 class
  (`rlhf_ds.engine.lora_export.conv1d_layout`). Tested in tests/lora/test_gpt2_conv1d.py.
* DeepSpeed checkpoints of a 4-bit model hold bitsandbytes' quantisation constants as extra
  state-dict keys, so resume loads them non-strictly (`Engine.load_checkpoint`); tested to
  continue exactly.

Stages, as tested (tests/lora/):   LoRA (full-precision base)   QLoRA (4-bit base)
    ZeRO-0, 1, 2                   yes                          yes
    ZeRO-3                         yes (base and adapters       refused before loading, with
                                   partitioned; 2 ranks)        the reason and what to use
"""
from __future__ import annotations

from typing import Iterable

import torch

QUANT_TYPES = ("nf4", "fp4")
# Heads that must stay in full precision: the LM head (transformers' default) and the scalar
# head of reward models and critics (trained, and a single row).
SKIP_MODULES = ("lm_head", "score")


def bnb_config(quant_type: str, double_quant: bool, compute_dtype: torch.dtype,
               skip_modules: Iterable[str] = SKIP_MODULES):
    """The `BitsAndBytesConfig` of a 4-bit base (block size 64, as in the QLoRA paper)."""
    from transformers import BitsAndBytesConfig

    if quant_type not in QUANT_TYPES:
        raise ValueError(f"lora.quantization must be one of {', '.join(QUANT_TYPES)} (or none), got {quant_type!r}")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=list(skip_modules))


def compute_dtype_of(setting: str, training_dtype: torch.dtype) -> torch.dtype:
    """`lora.compute_dtype`: auto follows the run's precision (bf16 on GPUs that have it, fp32 on CPU)."""
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if setting == "auto":
        return training_dtype
    if setting not in table:
        raise ValueError(f"lora.compute_dtype must be auto, fp32, bf16 or fp16, got {setting!r}")
    return table[setting]


def is_4bit_param(p: torch.Tensor) -> bool:
    return type(p).__name__ == "Params4bit"


def is_quantized(module: torch.nn.Module) -> bool:
    """True when any parameter is a bitsandbytes 4-bit weight."""
    return any(is_4bit_param(p) for p in module.parameters())


def disable_cpu_repack(module: torch.nn.Module) -> int:
    """Keep every Linear4bit in its trainable layout on CPU (see the module docstring); returns
    the number of layers changed."""
    n = 0
    for m in module.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def quantized_nbytes(p: torch.Tensor) -> int:
    """Bytes a 4-bit parameter really holds: packed weights plus its quantisation constants."""
    n = p.numel() * p.element_size()
    state = p.quant_state
    for t in (state.absmax, getattr(state, "code", None)):
        if torch.is_tensor(t):
            n += t.numel() * t.element_size()
    nested = getattr(state, "state2", None)
    if state.nested and nested is not None:
        for t in (nested.absmax, nested.code):
            n += t.numel() * t.element_size()
    return n
