"""Loading Hugging Face tokenizers and models for each role (policy, reward, critic).

All loaders go through `from_pretrained`, so inside the engine's ZeRO-3 construction
context each rank only ever materialises its shard. A local directory and a hub id are
treated alike; tests use local directories in the hub's format.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..data.special_tokens import ensure_pad_token
from ..errors import UserError


def quiet_transformers() -> None:
    """Progress bars of weight loading on every rank drown the run's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_local_path(path: str, what: str, needs: tuple) -> None:
    """A clear error for a local directory that lacks what transformers would look for (transformers'
    own message for a missing tokenizer talks about sentencepiece). Hub ids pass through."""
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in needs):
            raise FileNotFoundError(f"{path}: no {what} here (looked for {', '.join(needs)})")
    elif os.path.exists(path) or path.startswith(("/", ".", "~")) or path.count("/") != 1:
        raise FileNotFoundError(f"{what} not found: {path} is neither a directory nor a hub id (org/name)")


def check_model_path(path: str) -> None:
    """A local model directory must hold a config.json: without it transformers fails with a message about
    `model_type` keys. Hub ids pass through."""
    check_local_path(path, "model", ("config.json",))


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """A tokenizer with a pad token distinct from EOS (added when missing)."""
    from transformers import AutoTokenizer

    check_local_path(path, "tokenizer", TOKENIZER_FILES)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    ensure_pad_token(tok)
    return tok


def _attn_kwargs(attn_implementation: str):
    if attn_implementation in (None, "auto"):
        return {}
    if attn_implementation == "flash_attention_2" and not torch.cuda.is_available():
        raise UserError("model.attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn "
                        "package (pip install -e '.[gpu]'); use sdpa or eager on CPU")
    return {"attn_implementation": attn_implementation}


def _align_special_tokens(model, tokenizer) -> None:
    """Make the model agree with the tokenizer on vocabulary size and special ids.

    Under ZeRO-3 (inside the engine's model_construction) the weights are already partitioned: the
    row count is the full `ds_shape`, and transformers' resize_token_embeddings gathers the old
    embedding and head itself while its DeepSpeed config is live; the resized tensors are whole on
    each rank until deepspeed.initialize partitions them (a one-off embedding-sized peak)."""
    if tokenizer is None:
        return
    weight = model.get_input_embeddings().weight
    if len(tokenizer) > getattr(weight, "ds_shape", weight.shape)[0]:   # a ZeRO-3 shard's own shape is (0,)
        model.resize_token_embeddings(len(tokenizer))
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setattr(model.config, key, value)
            if getattr(model, "generation_config", None) is not None:
                setattr(model.generation_config, key, value)


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32, tokenizer=None,
                   attn_implementation: str = "auto", trust_remote_code: bool = False,
                   gradient_checkpointing: bool = False):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    check_model_path(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 **_attn_kwargs(attn_implementation))
    _align_special_tokens(model, tokenizer)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def load_scalar_model(path: str, dtype: torch.dtype = torch.float32, tokenizer=None,
                      attn_implementation: str = "auto", trust_remote_code: bool = False,
                      gradient_checkpointing: bool = False):
    """`AutoModelForSequenceClassification` with one label, from a reward-model directory or from a
    causal-LM directory (then the `score` head is new, the backbone is the LM's)."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    check_model_path(path)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code, output_loading_info=True,
        **_attn_kwargs(attn_implementation))
    mark_new_score_head(model, info)
    _align_special_tokens(model, tokenizer)
    check_pad_token(model, path)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def mark_new_score_head(model, loading_info: dict) -> None:
    """Flag a `score` head that the checkpoint lacked (a scalar model made from a causal LM). The
    engine re-initialises it from the seed, identically however many ranks hold it (transformers'
    own init of a ZeRO-3 partition depends on the rank); see ScalarHeadModel.new_parameters."""
    model.rlhf_ds_new_head = any(k.split(".")[-2:] == ["score", "weight"] for k in loading_info["missing_keys"])


def check_pad_token(model, path: str) -> None:
    if model.config.pad_token_id is None:
        raise UserError(f"{path}: the reward model has no pad_token_id; set one distinct from EOS (scores of a "
                        f"padded batch would otherwise be read at the wrong token)")


def enable_gradient_checkpointing(model) -> None:
    # Non-reentrant (PyTorch's recommended variant): it needs no block input that requires grad,
    # so adapters behind a frozen embedding get gradients without relying on an input hook.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def is_model_dir(path: Optional[str]) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "config.json"))
