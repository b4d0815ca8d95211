"""`<stage>/adapter/` is written only when base + adapter IS the trained model, and then it is: with a
vocabulary grown at load (new embedding and LM-head rows), the adapter carries the embeddings; with base
weights trained too (`only_optimize_lora=false`) there is no adapter, and `rlhf_ds.json` says why."""
import json
import os

import pytest
import torch

from rlhf_ds.engine import export_pretrained
from rlhf_ds.models.loading import load_tokenizer
from rlhf_ds.models.lora import load_lm, load_scalar
from rlhf_ds.models.policy import PolicyModel
from rlhf_ds.models.scalar_head import ScalarHeadModel

from .conftest import batch, lora, train_engine

NEW_TOKEN = "<|added_for_the_test|>"


def grown_tokenizer(path):
    """The model's tokenizer with one token more than its embedding has rows (as when a pad is added)."""
    tok = load_tokenizer(path)
    assert tok.add_tokens([NEW_TOKEN], special_tokens=True) == 1
    return tok


def inputs_with_new_token(tok, seed):
    ids, mask = batch(vocab=len(tok), seed=seed)
    ids[:, -2] = tok.convert_tokens_to_ids(NEW_TOKEN)          # the new row is read by every sequence
    return ids, mask


def train(engine, tok, key, steps=2):
    engine.train()
    for seed in range(steps):
        ids, mask = inputs_with_new_token(tok, seed)
        engine.backward(-engine(ids, mask)[key].mean())
        engine.step()
    engine.eval()


def metadata(out):
    with open(os.path.join(out, "rlhf_ds.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("stage", [2, 3])
def test_grown_vocabulary_adapter_carries_the_embeddings(dist, base_dir, tmp_path, stage):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = grown_tokenizer(base_dir)
    base_rows = AutoModelForCausalLM.from_pretrained(base_dir).get_input_embeddings().weight.shape[0]
    assert len(tok) == base_rows + 1
    actor = train_engine("actor", lambda: PolicyModel(load_lm(base_dir, "actor", lora(), tokenizer=tok)), stage)
    train(actor, tok, "logprobs")
    out = str(tmp_path / "sft")
    export_pretrained(actor, "lm", out, tok, {"stage": "test"})
    ids, mask = inputs_with_new_token(tok, seed=7)
    with torch.no_grad():
        trained = actor(ids, mask, num_scored=8)["logprobs"]
    # The documented way: resize the base to the tokenizer, then load the adapter ...
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base.resize_token_embeddings(len(tok))
    with_adapter = PeftModel.from_pretrained(base, f"{out}/adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        for model in (with_adapter, merged):
            assert torch.allclose(PolicyModel(model)(ids, mask, num_scored=8)["logprobs"], trained, atol=1e-4)
        # ... or let peft do both from the adapter directory alone (it holds the tokenizer).
        assert len(AutoTokenizer.from_pretrained(f"{out}/adapter")) == len(tok)
        auto = AutoPeftModelForCausalLM.from_pretrained(f"{out}/adapter").eval()
        assert torch.allclose(PolicyModel(auto)(ids, mask, num_scored=8)["logprobs"], trained, atol=1e-4)
    info = metadata(out)["lora"]
    assert info["adapter"] == "adapter"
    emb = info["adapter_embeddings"]
    assert (emb["base_vocab_size"], emb["vocab_size"]) == (base_rows, base_rows + 1)
    assert emb["saved"] == ["model.embed_tokens.weight", "lm_head.weight"]        # untied: both
    with safe_open(f"{out}/adapter/adapter_model.safetensors", "pt") as f:
        assert f.get_tensor("base_model.model.model.embed_tokens.weight").shape[0] == base_rows + 1
    actor.destroy()


def test_grown_vocabulary_reward_adapter_carries_the_embeddings(dist, reward_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    tok = grown_tokenizer(reward_dir)
    engine = train_engine("reward", lambda: ScalarHeadModel(load_scalar(reward_dir, "reward", lora(), tokenizer=tok)),
                          2)
    train(engine, tok, "scores")
    out = str(tmp_path / "rm")
    export_pretrained(engine, "model", out, tok, {"stage": "reward"})
    ids, mask = inputs_with_new_token(tok, seed=9)
    with torch.no_grad():
        trained = engine(ids, mask)["scores"]
    base = AutoModelForSequenceClassification.from_pretrained(reward_dir)
    base.resize_token_embeddings(len(tok))
    with_adapter = PeftModel.from_pretrained(base, f"{out}/adapter").eval()
    with torch.no_grad():
        from_adapter = ScalarHeadModel(with_adapter.base_model.model)(ids, mask)["scores"]
    assert torch.allclose(from_adapter, trained, atol=1e-4)
    assert metadata(out)["lora"]["adapter_embeddings"]["saved"] == ["model.embed_tokens.weight"]
    engine.destroy()


def test_no_adapter_when_base_weights_trained(dist, base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(base_dir)
    settings = lora(only_optimize_lora=False)
    actor = train_engine("actor", lambda: PolicyModel(load_lm(base_dir, "actor", settings, tokenizer=tok)), 2)
    train(actor, tok, "logprobs")
    out = str(tmp_path / "ppo")
    export_pretrained(actor, "lm", out, tok, {"stage": "test"})
    assert not os.path.exists(os.path.join(out, "adapter"))
    info = metadata(out)["lora"]
    assert info["adapter"] is None and "lora.only_optimize_lora=false" in info["adapter_omitted"]
    assert "adapter_embeddings" not in info
    ids, mask = batch(seed=5)
    with torch.no_grad():
        trained = actor(ids, mask, num_scored=8)["logprobs"]
        merged = PolicyModel(AutoModelForCausalLM.from_pretrained(out).eval())(ids, mask, num_scored=8)["logprobs"]
    assert torch.allclose(merged, trained, atol=1e-4)                 # the merged export is the model
    actor.destroy()


def test_ordinary_adapter_holds_only_the_adapter(dist, base_dir, tmp_path):
    from safetensors import safe_open

    tok = load_tokenizer(base_dir)
    actor = train_engine("actor", lambda: PolicyModel(load_lm(base_dir, "actor", lora(), tokenizer=tok)), 0)
    out = str(tmp_path / "ppo")
    export_pretrained(actor, "lm", out, tok, {"stage": "test"})
    info = metadata(out)["lora"]
    assert info["adapter"] == "adapter" and "adapter_embeddings" not in info and "adapter_omitted" not in info
    with safe_open(f"{out}/adapter/adapter_model.safetensors", "pt") as f:
        assert all("lora_" in k for k in f.keys())
    actor.destroy()
