"""The demo's tiny base model: size, determinism, loading as policy and as reward model."""
import os

import pytest

torch = pytest.importorskip("torch")

from rlhf_ds.tasks.tiny_model import MAX_NEW_TOKENS, build_tiny_model, count_parameters, tiny_config
from rlhf_ds.tasks.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tokenizer"))
    build_tokenizer(path, seed=0)
    return path


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tmp_path_factory, tokenizer_dir):
    path = str(tmp_path_factory.mktemp(f"tiny_{request.param}"))
    build_tiny_model(tokenizer_dir, path, arch=request.param, seed=0)
    return path


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_size_and_special_ids(model_dir, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    n = count_parameters(model)
    assert 300_000 <= n <= 2_000_000, n   # the demo asks for at most ~10M; this one is ~1M
    assert model.config.vocab_size == len(tok)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(model.config, name) == getattr(tok, name), name
        assert getattr(model.generation_config, name) == getattr(tok, name), name
    assert model.config.pad_token_id != model.config.eos_token_id
    assert model.dtype == torch.float32
    assert os.path.exists(os.path.join(model_dir, "model.safetensors"))
    # The tokenizer travels with the model and loads back the same, even where
    # AutoTokenizer picks a model-specific class (Qwen2Tokenizer for "qwen2").
    beside = AutoTokenizer.from_pretrained(model_dir)
    assert beside.get_vocab() == tok.get_vocab() and len(beside) == len(tok)
    assert beside.chat_template == tok.chat_template
    for text in ["the cat is very warm and it feels calm.", "  Odd TEXT, été 42 .\n", "we'll see"]:
        assert beside.encode(text) == tok.encode(text)


def test_loads_back_as_the_same_causal_lm(model_dir, tokenizer_dir):
    from transformers import AutoModelForCausalLM

    arch = AutoModelForCausalLM.from_pretrained(model_dir).config.model_type
    rebuilt = build_tiny_model(tokenizer_dir, None, arch=arch, seed=0)
    assert _same_weights(AutoModelForCausalLM.from_pretrained(model_dir), rebuilt)


def test_loads_as_a_scalar_reward_model(model_dir):
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    assert rm.config.pad_token_id is not None
    pad = rm.config.pad_token_id
    ids = torch.tensor([[1, 4, 300, 301, 2, 5, 302, 2], [1, 4, 300, 2, 5, 302, 2, pad]])
    scores = rm(input_ids=ids, attention_mask=(ids != pad).long()).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


def test_generate_stops_within_the_default_budget(model_dir, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "describe the cat"}],
                                     add_generation_prompt=True, tokenize=False)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**enc)
    new = out.shape[1] - enc["input_ids"].shape[1]
    assert 1 <= new <= MAX_NEW_TOKENS


def test_seeded_and_leaves_the_global_rng_alone(tokenizer_dir):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_model(tokenizer_dir, None, seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_tiny_model(tokenizer_dir, None, seed=5)
    c = build_tiny_model(tokenizer_dir, None, seed=6)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_config_checks(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    with pytest.raises(ValueError, match="arch"):
        tiny_config(tok, arch="gpt2")
    with pytest.raises(ValueError, match="unknown overrides"):
        tiny_config(tok, hidden=64)
    small = build_tiny_model(tok, None, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    assert count_parameters(small) < 250_000
