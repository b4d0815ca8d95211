"""A pad token that is not EOS.

Base tokenizers of Llama-3, Qwen and many others ship without a pad token (or with
pad = EOS). The usual fix, `tokenizer.pad_token = tokenizer.eos_token`, breaks
things quietly: a sequence-classification reward model exported to Hugging Face
finds the last real token as the last non-pad token, so with pad == EOS it scores
the token before the EOS a response ends with (or the wrong position altogether);
and any code that rebuilds masks from `input_ids != pad_token_id` masks every EOS.

`ensure_pad_token` picks, in order:
1. the existing pad token, when it is set and differs from EOS;
2. a pad-like special token the vocabulary already has but does not use for
   anything else (`PAD_CANDIDATES`, e.g. Llama-3.1's `<|finetune_right_pad_id|>`,
   Qwen2.5's `<|fim_pad|>`), then an unused reserved token (Llama-3's
   `<|reserved_special_token_N|>`, the highest N): no new embedding row needed;
3. a new special token `<|pad|>`: the vocabulary grows by one and the caller must
   resize the model's embeddings (`model.resize_token_embeddings(len(tokenizer))`).
Whatever the choice, the caller also sets `model.config.pad_token_id`.
"""
from __future__ import annotations

import re

NEW_PAD_TOKEN = "<|pad|>"
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|padding|>", "<|fim_pad|>")
_RESERVED = re.compile(r"^<\|reserved_special_token_(\d+)\|>$")


def _reusable_pad(tokenizer):
    vocab = tokenizer.get_vocab()
    in_use = {tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id} - {None}
    for token in PAD_CANDIDATES:
        if token in vocab and vocab[token] not in in_use:
            return token
    reserved = [(int(m.group(1)), tok) for tok in tokenizer.get_added_vocab()
                if (m := _RESERVED.match(tok)) and vocab[tok] not in in_use]
    return max(reserved)[1] if reserved else None


def ensure_pad_token(tokenizer) -> bool:
    """Give `tokenizer` a pad token different from its EOS token.

    Returns True when a new token was added (resize the model's embeddings), False
    when an existing token now serves as pad. Safe to call twice.
    """
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is not None and pad != eos:
        return False
    token = _reusable_pad(tokenizer)
    if token is not None:
        tokenizer.pad_token = token
        return False
    tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
    return True


def check_pad_token(tokenizer) -> int:
    """The pad id, or a ValueError telling the caller to run `ensure_pad_token`."""
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError("the tokenizer has no pad token; call rlhf_ds.data.ensure_pad_token(tokenizer) "
                         "first (and resize the model's embeddings if it returns True)")
    if pad == tokenizer.eos_token_id:
        raise ValueError(f"the tokenizer's pad token equals its EOS token (id {pad}); this breaks reward "
                         "indexing and masks. Call rlhf_ds.data.ensure_pad_token(tokenizer) first")
    return pad
