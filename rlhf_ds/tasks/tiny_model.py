"""The demo's base model: a tiny, randomly initialised LLaMA- or Qwen2-style causal LM.

About 0.95M parameters (hidden 128, 4 layers, 4 query heads sharing 2 key/value
heads, MLP 384): large enough to learn the task's language and its reward in a
few hundred steps, small enough that SFT, RM and PPO each train in minutes on two
CPU cores. Grouped-query attention is on by default so the demo exercises the same
code paths as real Qwen2 / LLaMA-3 checkpoints.

The base is built once, on one process, and saved with `save_pretrained`; trainers
load it with `from_pretrained` (with transformers 5.x, `from_config` under
`deepspeed.zero.Init` fails when `pad_token_id` is set). The same directory loads
as `AutoModelForCausalLM` (policy, reference) and as
`AutoModelForSequenceClassification` with `num_labels=1` (reward model, critic);
its tokenizer is saved beside it.
"""
from __future__ import annotations

import os
from typing import Dict, Union

from .tokenizer import MODEL_MAX_LENGTH

# Default shape. Changing one of these through `build_tiny_model(**overrides)`
# is how a test or a benchmark asks for a different size.
TINY_SHAPE: Dict[str, int] = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 384,
    "max_position_embeddings": MODEL_MAX_LENGTH,
}
# Std of the random initial weights. transformers' default, 0.02, is small for
# hidden size 128: measured on this task, the SFT model then needs ~300-500 steps
# (and a constant learning rate) before it starts to copy the prompt's topic into
# its response; with 0.05 it does so before step 200, on two seeds.
INITIALIZER_RANGE = 0.05
# Longest response the demo generates, eos included: the longest task response is
# ~24 tokens; the slack lets a policy that forgot to stop be seen and scored.
MAX_NEW_TOKENS = 32

_CONFIGS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config"}


def _load_tokenizer(tokenizer):
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(tokenizer)
    return tokenizer


def tiny_config(tokenizer, arch: str = "llama", **overrides):
    """The model config for `tokenizer` (vocabulary size and special-token ids)."""
    import transformers

    if arch not in _CONFIGS:
        raise ValueError(f"arch must be one of {sorted(_CONFIGS)}, got {arch!r}")
    extra = {"rope_theta", "tie_word_embeddings", "initializer_range"}
    unknown = set(overrides) - set(TINY_SHAPE) - extra
    if unknown:
        raise ValueError(f"unknown overrides {sorted(unknown)}; allowed: "
                         f"{sorted(set(TINY_SHAPE) | extra)}")
    shape = {"initializer_range": INITIALIZER_RANGE, **TINY_SHAPE, **overrides}
    # Untied input and output embeddings (+80K parameters): with them tied, the SFT
    # model took ~500 steps instead of ~300 to start copying the prompt's topic
    # into its response (measured on this task with the default init, two seeds).
    tie = shape.pop("tie_word_embeddings", False)
    config_class = getattr(transformers, _CONFIGS[arch])
    return config_class(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie,
        **shape,
    )


def tiny_generation_config(tokenizer, max_new_tokens: int = MAX_NEW_TOKENS):
    """Defaults for `generate`: stop at eos, pad with pad, sample at temperature 1."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )


def build_tiny_model(tokenizer: Union[str, os.PathLike, object], out_dir: str = None,
                     arch: str = "llama", seed: int = 0, **overrides):
    """A randomly initialised causal LM for `tokenizer` (a directory or an object).

    Deterministic given `seed` (the global torch RNG is left as it was). With
    `out_dir`, saves model (safetensors), generation config and tokenizer there.
    Returns the model, in float32, in eval mode.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = _load_tokenizer(tokenizer)
    config = tiny_config(tokenizer, arch, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = tiny_generation_config(tokenizer)
    model.eval()
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    return model


def count_parameters(model) -> int:
    """Number of distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())
