"""Fixtures for the data tests: real tokenizers trained here, and file writers.

Two tokenizers, both a byte-level BPE trained on a few hundred local sentences,
wrapped in `PreTrainedTokenizerFast`, saved and reloaded through `AutoTokenizer`:

- `plain`: Llama-like. Adds BOS `<s>` on encoding, EOS `</s>`, NO pad token and NO
  chat template (so our plain template is used).
- `chatml`: Qwen-like. No BOS, EOS `</s>`, pad `<pad>`, and a ChatML chat template
  with its own markers `<|im_start|>` / `<|im_end|>` (special tokens), which does
  not end turns with EOS.
"""
import json
import random

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = ("the quick brown fox jumps over lazy dog what is capital of france paris tell me a joke "
          "about cats why did chicken cross road hello how are you fine thanks please write poem "
          "sun moon star river mountain answer question human assistant good bad best worst "
          "one two three four five six seven eight nine ten explain simple terms").split()


def _corpus(n=400, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + rng.choice(".?!")
            for _ in range(n)]


def _train(special_tokens):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return tok


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tokenizers")
    plain = _train(["<unk>", "<s>", "</s>"])
    plain.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", plain.token_to_id("<s>"))])
    PreTrainedTokenizerFast(tokenizer_object=plain, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(root / "plain")

    chat = _train(["<unk>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=chat, eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(root / "chatml")
    return {"plain": str(root / "plain"), "chatml": str(root / "chatml")}


@pytest.fixture
def plain_tokenizer(tokenizer_dirs):
    """Fresh copy (tests mutate it with ensure_pad_token): BOS, no pad, no template."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_dirs["plain"])


@pytest.fixture
def padded_plain_tokenizer(plain_tokenizer):
    from rlhf_ds.data import ensure_pad_token
    ensure_pad_token(plain_tokenizer)
    return plain_tokenizer


@pytest.fixture
def chatml_tokenizer(tokenizer_dirs):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_dirs["chatml"])


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(name, [obj | raw str line, ...]) -> path; str items are written verbatim."""
    def write(name, items):
        path = tmp_path / name
        lines = [item if isinstance(item, str) else json.dumps(item) for item in items]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(path)
    return write


@pytest.fixture
def cache_dir(tmp_path):
    """A private `datasets` cache, so tests never touch the user's."""
    return str(tmp_path / "hf_cache")
