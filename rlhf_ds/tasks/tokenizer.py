"""The demo's tokenizer: a byte-level BPE trained here, on the task's own text.

Byte-level, because decoding then gives back exactly the text that was encoded
(spaces included), so the gold reward parses a decoded response as it parsed the
original; and any other text still encodes (all 256 bytes are in the alphabet).
The merges are trained until they run out, which with this corpus makes every
response word a single token ("Ġwarm"), so responses are ~10 tokens long.

Special tokens, all distinct: <|pad|> (never equal to eos: a pad that is also eos
is masked out of the labels and the model never learns to stop), <|bos|>, <|end|>
(the eos: closes every chat turn, so generation stops at the end of the assistant
turn), <|unk|> (never produced by a byte-level BPE; it is declared so that no
tokenizer class adds a default one, see below) and one marker per role.

Pre-tokenization and normalisation are those that `transformers` rebuilds for a
Qwen2 checkpoint: AutoTokenizer on a directory whose config says "qwen2" loads
`Qwen2Tokenizer`, which keeps our vocabulary and merges but re-creates the
normaliser (NFC), the pre-tokenizer (the regular expression below, then byte-level)
and, if none is declared, adds an "<|endoftext|>" unk token. With the same
definitions here and a declared unk, the tokenizer saved beside a Qwen2 model loads
back identical to this one (tested).

The chat template renders

    <|bos|><|system|>...<|end|><|user|>describe the cat<|end|><|assistant|>the cat is warm.<|end|>

with no whitespace around the markers, so that the tokens of a prompt rendered
with `add_generation_prompt=True` are a prefix of the tokens of the full
conversation, and the response tokens are `encode(response) + [eos]`.
"""
from __future__ import annotations

import os
from typing import List

from .generator import DescribeTask

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|end|>"
UNK_TOKEN = "<|unk|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS: List[str] = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *ROLE_TOKENS.values()]

# Splits text into pieces before byte-level BPE: contractions, words with at most
# one leading non-letter (usually the space), single digits, punctuation runs,
# newlines, other whitespace. Must stay equal to the one of transformers'
# Qwen2Tokenizer (see the module docstring).
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Enough for every response word to be one token: training stops earlier when the
# corpus has no pair left to merge (about 660 tokens with the default corpus).
DEFAULT_VOCAB_SIZE = 1024
# Prompt (~10 tokens) + response (at most ~25 with eos) fit well inside this.
MODEL_MAX_LENGTH = 128

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role'] + '; use system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def tokenizer_corpus(seed: int = 0, n_records: int = 3000) -> List[str]:
    """Text the BPE is trained on: prompts and responses of the task (both splits,
    so no held-out word is split oddly), a deterministic function of the seed."""
    task = DescribeTask(seed=seed)
    texts: List[str] = []
    for split, n in (("train", n_records), ("eval", n_records // 4)):
        for record in task.sft_records(n, split=split):
            texts.extend((record["prompt"], record["response"]))
    return texts


def train_bpe(texts: List[str], vocab_size: int = DEFAULT_VOCAB_SIZE):
    """A `tokenizers.Tokenizer`: byte-level BPE over `texts`, special tokens first
    (ids 0..6, in the order of SPECIAL_TOKENS)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    # No prefix space: a response is encoded the same alone and after <|assistant|>.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def build_tokenizer(out_dir: str = None, seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE,
                    texts: List[str] = None):
    """Train the demo tokenizer and return it as a `PreTrainedTokenizerFast`;
    with `out_dir`, also `save_pretrained` it there (AutoTokenizer loads it back).
    `texts`: another task's corpus (default: the describe task's, for `seed`)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(tokenizer_corpus(seed) if texts is None else texts, vocab_size),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS.values()),
        chat_template=CHAT_TEMPLATE,
        # Keep decode(encode(text)) == text: no "clean-up" of spaces before "." etc.
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        tokenizer.save_pretrained(out_dir)
    return tokenizer
