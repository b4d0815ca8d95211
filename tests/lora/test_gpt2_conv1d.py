"""LoRA and QLoRA on a GPT-2 model, whose projections (c_attn, c_proj, c_fc) are transformers' `Conv1D`:
a linear layer with its weight stored transposed, (in, out). peft adapts it with `fan_in_fan_out`;
bitsandbytes quantises it as a Linear4bit of the transposed weight. Each path is checked against
what the model computes: the hybrid engine's merged generation copy, the merged export and the adapter
export, at ZeRO-0, 2 and 3 (LoRA) and ZeRO-0, 2 (QLoRA, nf4 on bitsandbytes' CPU backend)."""
import os

import pytest
import torch

from rlhf_ds.engine import GenerationSettings, HybridEngine, export_pretrained, hf_generate
from rlhf_ds.engine.lora_hybrid import merged_lora_copy
from rlhf_ds.lora_settings import LoRAConfigError
from rlhf_ds.models.loading import load_tokenizer
from rlhf_ds.models.lora import load_lm, load_scalar, resolve_target_modules
from rlhf_ds.models.policy import PolicyModel

from .conftest import batch, lora, train_engine

PROJECTIONS = {"c_attn", "c_proj", "c_fc"}
SCALE = 8.0 / 4                     # lora(): alpha 8, r 4


@pytest.fixture(scope="session")
def gpt2_dir(base_dir, tmp_path_factory):
    """A tiny, randomly initialised GPT-2 (2 blocks, hidden 64, tied LM head) on the demo's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = load_tokenizer(base_dir)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    out = str(tmp_path_factory.mktemp("gpt2") / "base")
    GPT2LMHeadModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _adapted(model):
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def test_all_linear_finds_the_conv1d_projections_not_the_heads(gpt2_dir):
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    lm = load_lm(gpt2_dir, "actor", lora())
    adapted = _adapted(lm)
    assert {n.rsplit(".", 1)[-1] for n in adapted} == PROJECTIONS
    assert len(adapted) == 2 * 4                   # 2 blocks x (c_attn, attn c_proj, c_fc, mlp c_proj)
    assert all(isinstance(m.base_layer, Conv1D) and m.fan_in_fan_out for m in adapted.values())
    assert not hasattr(lm.lm_head, "lora_A")
    assert lm.peft_config["default"].fan_in_fan_out                   # so the saved adapter says so
    scalar = load_scalar(gpt2_dir, "reward", lora())
    assert {n.rsplit(".", 1)[-1] for n in _adapted(scalar)} == PROJECTIONS       # `score` is not adapted
    plain = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    assert resolve_target_modules(plain, "all-linear") == ["c_attn", "c_fc", "c_proj"]
    assert resolve_target_modules(plain, ("c_attn",)) == ["c_attn"]
    with pytest.raises(LoRAConfigError, match=r"q_proj not found in .*: c_attn, c_fc, c_proj"):
        resolve_target_modules(plain, ("q_proj",))


def _train(engine, steps=3):
    engine.train()
    for seed in range(steps):
        ids, mask = batch(seed=seed)
        engine.backward(-engine(ids, mask)["logprobs"].mean())
        engine.step()
    engine.eval()


def _logprobs(model, ids, mask):
    with torch.no_grad():
        return PolicyModel(model.eval())(ids, mask, num_scored=8)["logprobs"]


def _expected_merge(state, name):
    """W + (alpha / r) * (B A)^T: the Conv1D weight is (in, out), B A is (out, in)."""
    w = state[f"lm.{name}.base_layer.weight"]
    a, b = state[f"lm.{name}.lora_A.default.weight"], state[f"lm.{name}.lora_B.default.weight"]
    assert w.shape == (a.shape[1], b.shape[0])
    return w + SCALE * (b @ a).T


def _prompts(tok):
    tok.padding_side = "left"
    enc = tok(["describe the cat", "tell me about the river please"], return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_lora_on_conv1d_merges_and_exports_the_trained_model(dist, gpt2_dir, tmp_path, stage):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(gpt2_dir)
    actor = train_engine("actor", lambda: PolicyModel(load_lm(gpt2_dir, "actor", lora())), stage)
    _train(actor)
    ids, mask = batch(seed=5)
    with torch.no_grad():
        trained = actor(ids, mask, num_scored=8)["logprobs"]
    state = actor.full_state_dict()
    assert state["lm.transformer.h.0.attn.c_attn.lora_B.default.weight"].abs().sum() > 0    # the adapters moved

    # The hybrid engine's generation copy: the plain GPT-2 holding the fused weights.
    copy = merged_lora_copy(actor)
    for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"):
        assert torch.allclose(copy.get_parameter(f"{name}.weight"), _expected_merge(state, name), atol=1e-6)
    assert torch.allclose(_logprobs(copy, ids, mask), trained, atol=1e-5)

    out = str(tmp_path / "ppo")
    export_pretrained(actor, "lm", out, tok, {"stage": "test"})
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_logprobs(merged, ids, mask), trained, atol=1e-5)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(gpt2_dir), f"{out}/adapter")
    assert torch.allclose(_logprobs(with_adapter, ids, mask), trained, atol=1e-5)

    # Rollouts: whatever the stage (fused copy at ZeRO-3, the engine's own model below), greedy samples
    # are the exported model's.
    prompt_ids, prompt_mask = _prompts(tok)
    settings = GenerationSettings(max_new_tokens=8, do_sample=False)
    sampled = HybridEngine(actor).generate(prompt_ids, prompt_mask, settings, tok.eos_token_id, tok.pad_token_id)
    assert torch.equal(sampled, hf_generate(merged.eval(), prompt_ids, prompt_mask, settings, tok.eos_token_id,
                                            tok.pad_token_id))
    actor.destroy()


def _bnb_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head", "score"])


@pytest.mark.parametrize("stage", [0, 2])
def test_qlora_on_conv1d_exports_the_trained_model(dist, gpt2_dir, tmp_path, stage):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(gpt2_dir)
    settings = lora("nf4")
    actor = train_engine("actor", lambda: PolicyModel(load_lm(gpt2_dir, "actor", settings)), stage)
    layers = _adapted(actor.module.lm)
    assert {n.rsplit(".", 1)[-1] for n in layers} == PROJECTIONS
    assert all(type(m.base_layer).__name__ == "Linear4bit" for m in layers.values())
    ids, mask = batch(seed=5)
    # bitsandbytes holds each Conv1D as the 4-bit (out, in) transpose: before training (B = 0) the model is
    # the full-precision GPT-2 up to quantisation error, far from what an untransposed weight would give.
    with torch.no_grad():
        start = actor(ids, mask, num_scored=8)["logprobs"]
    full = _logprobs(AutoModelForCausalLM.from_pretrained(gpt2_dir), ids, mask)
    assert (start - full).abs().max() < 0.05
    _train(actor)
    with torch.no_grad():
        trained = actor(ids, mask, num_scored=8)["logprobs"]
    assert (trained - start).abs().max() > 1e-3                        # the adapters moved the model

    out = str(tmp_path / "ppo")
    export_pretrained(actor, "lm", out, tok, {"stage": "test"})
    merged = AutoModelForCausalLM.from_pretrained(out)            # plain GPT-2: Conv1D, (in, out) weights
    assert getattr(merged.config, "quantization_config", None) is None
    assert merged.transformer.h[0].mlp.c_fc.weight.shape == (64, 4 * 64)
    assert torch.allclose(_logprobs(merged, ids, mask), trained, atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(gpt2_dir, quantization_config=_bnb_config())
    for m in base.modules():                                     # as rlhf_ds loads 4-bit models on CPU
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    with_adapter = PeftModel.from_pretrained(base, f"{out}/adapter")
    assert torch.allclose(_logprobs(with_adapter, ids, mask), trained, atol=1e-4)
    actor.destroy()
