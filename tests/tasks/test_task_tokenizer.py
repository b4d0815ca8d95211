"""The demo tokenizer: special tokens, exact round trip, chat template."""
import json
import os

import pytest

from rlhf_ds.tasks import DescribeTask, gold_attributes
from rlhf_ds.tasks import vocabulary as V
from rlhf_ds.tasks.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, ROLE_TOKENS, UNK_TOKEN, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tokenizer"))
    build_tokenizer(path, seed=0)
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_loads_with_distinct_special_tokens(tok):
    assert tok.pad_token == PAD_TOKEN and tok.eos_token == EOS_TOKEN and tok.bos_token == BOS_TOKEN
    assert tok.unk_token == UNK_TOKEN
    ids = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] + \
        tok.convert_tokens_to_ids(list(ROLE_TOKENS.values()))
    assert None not in ids and len(set(ids)) == len(ids)
    assert tok.pad_token_id != tok.eos_token_id
    assert 300 <= len(tok) <= 1024


def test_same_seed_same_tokenizer(tokenizer_dir, tmp_path):
    build_tokenizer(str(tmp_path), seed=0)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(tokenizer_dir, name), "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name


def test_every_response_word_is_one_token(tok):
    response_words = set(V.WORD_CLASS)
    multi = [w for w in response_words if len(tok.encode(" " + w, add_special_tokens=False)) != 1]
    assert not multi


def test_round_trip_is_exact_and_gold_parses_the_same(tok):
    task = DescribeTask(seed=11)
    texts = [r["response"] for r in task.sft_records(300)] + \
        [x for r in task.ranking_records(50) for x in r["responses"]]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        back = tok.decode(ids, skip_special_tokens=True)
        assert back == text
        assert gold_attributes("describe the cat", back) == gold_attributes("describe the cat", text)
    # Text outside the task still round-trips (byte-level): spaces, capitals, unicode.
    odd = "  Hello,  World! été 42 .\n"
    assert tok.decode(tok.encode(odd, add_special_tokens=False)) == odd


def test_no_special_tokens_added_outside_the_template(tok):
    assert tok("the cat")["input_ids"] == tok("the cat", add_special_tokens=False)["input_ids"]


def _render(tok, messages, **kwargs):
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def test_chat_template_rendering(tok):
    messages = [{"role": "system", "content": "be nice"},
                {"role": "user", "content": "describe the cat"},
                {"role": "assistant", "content": "the cat is warm."}]
    assert _render(tok, messages) == (
        "<|bos|><|system|>be nice<|end|><|user|>describe the cat<|end|>"
        "<|assistant|>the cat is warm.<|end|>")
    assert _render(tok, messages[1:2], add_generation_prompt=True) == \
        "<|bos|><|user|>describe the cat<|end|><|assistant|>"
    assert _render(tok, messages[1:2]) == "<|bos|><|user|>describe the cat<|end|>"
    with pytest.raises(Exception, match="unknown role"):
        _render(tok, [{"role": "robot", "content": "hi"}])


def test_prompt_tokens_are_a_prefix_of_the_conversation(tok):
    # What the data layer relies on: response tokens = encode(response) + [eos].
    for record in DescribeTask(seed=1).sft_records(50):
        user = [{"role": "user", "content": record["prompt"]}]
        prompt = tok(_render(tok, user, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        full = tok(_render(tok, user + [{"role": "assistant", "content": record["response"]}]),
                   add_special_tokens=False)["input_ids"]
        response = tok.encode(record["response"], add_special_tokens=False) + [tok.eos_token_id]
        assert full == prompt + response
        assert prompt[0] == tok.bos_token_id and full[-1] == tok.eos_token_id


def test_saved_config_names_the_template_and_tokens(tokenizer_dir):
    with open(os.path.join(tokenizer_dir, "tokenizer_config.json")) as f:
        config = json.load(f)
    saved_template = config.get("chat_template") or open(
        os.path.join(tokenizer_dir, "chat_template.jinja")).read()
    assert "add_generation_prompt" in saved_template
    assert config["pad_token"] == PAD_TOKEN and config["eos_token"] == EOS_TOKEN
    assert config.get("clean_up_tokenization_spaces") is False
