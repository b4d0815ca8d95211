"""LoRA and QLoRA inside real DeepSpeed engines (one rank): which ZeRO stages hold them, what trains,
the reference from disabled adapters, the hybrid engine, the exports."""
import math

import pytest
import torch

from rlhf_ds.engine import (GenerationSettings, HybridEngine, build_inference_engine, export_pretrained,
                            hf_generate)
from rlhf_ds.engine.lora_hybrid import merged_lora_copy
from rlhf_ds.engine.quantized import QuantizedStageError, dequantize_param, is_4bit_param, pinned_device
from rlhf_ds.lora_settings import LoRAConfigError, check_lora_config
from rlhf_ds.models.lora import CriticWithRewardHead, adapters_disabled, load_lm, load_scalar, read_head
from rlhf_ds.models.loading import load_tokenizer
from rlhf_ds.models.policy import PolicyModel
from rlhf_ds.models.scalar_head import ScalarHeadModel
from rlhf_ds.trainers.lora_setup import ReferenceFromActor

from .conftest import ZERO, batch, lora, train_engine

CASES = [("none", 0), ("none", 2), ("none", 3), ("nf4", 0), ("nf4", 2)]
STAGES = CASES + [("none", 1), ("nf4", 1), ("fp4", 2)]


def _ids(case):
    return f"{'qlora' if case[0] != 'none' else 'lora'}-zero{case[1]}"


def policy_engine(base_dir, quantization, stage, **kw):
    settings = lora(quantization)
    return train_engine("actor", lambda: PolicyModel(load_lm(base_dir, "actor", settings)), stage, **kw)


def snapshot(engine):
    """Every parameter as a full-precision CPU tensor (4-bit weights dequantised)."""
    out = {}
    with engine.gathered():
        for n, p in engine.module.named_parameters():
            out[n] = dequantize_param(p).cpu() if is_4bit_param(p) else p.detach().cpu().clone()
    return out


def train_steps(engine, steps=2, seed=0):
    engine.train()
    losses = []
    for i in range(steps):
        ids, mask = batch(seed=seed + i)
        loss = -engine(ids, mask)["logprobs"].mean()
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("case", STAGES, ids=lambda c: f"{c[0]}-zero{c[1]}")
def test_a_step_trains_only_the_adapters(dist, base_dir, case):
    quantization, stage = case
    engine = policy_engine(base_dir, quantization, stage)
    before = snapshot(engine)
    losses = train_steps(engine)
    after = snapshot(engine)
    assert all(math.isfinite(x) for x in losses)
    adapters = [n for n in before if "lora_" in n]
    assert adapters and all(engine.module.get_parameter(n).requires_grad for n in adapters)
    assert any(not torch.equal(before[n], after[n]) for n in adapters if "lora_B" in n)
    frozen = [n for n in before if "lora_" not in n]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen), "a base weight changed"
    n4 = sum(is_4bit_param(p) for p in engine.module.parameters())
    assert (n4 > 0) == (quantization != "none")          # still 4-bit inside the engine
    engine.destroy()


def test_qlora_at_zero3_is_refused_with_the_reason(dist, base_dir):
    # Refused before the model is loaded (inside the engine's ZeRO-3 construction context) ...
    with pytest.raises(LoRAConfigError, match=r"ZeRO-3.*cannot be usefully partitioned.*qlora_single_gpu.json"):
        policy_engine(base_dir, "nf4", 3)
    # ... and by the engine itself for a 4-bit model built some other way.
    model = PolicyModel(load_lm(base_dir, "actor", lora("nf4")))
    with pytest.raises(QuantizedStageError, match=r"ZeRO-3.*ZeRO stage 0, 1 or 2.*qlora_single_gpu.json"):
        train_engine("actor", lambda: model, 3)
    with pytest.raises(LoRAConfigError, match=r"QLoRA\) needs ZeRO stage 0, 1 or 2"):
        check_lora_config(lora("nf4"), zero_stage=3)
    check_lora_config(lora("nf4"), zero_stage=2)
    check_lora_config(lora("none"), zero_stage=3)


def test_lora_learning_rate_and_only_optimize_lora(dist, base_dir):
    settings = lora(learning_rate=1e-3)
    engine = train_engine("actor", lambda: PolicyModel(load_lm(base_dir, "actor", settings)), 0, lr=1e-5,
                          lr_overrides=settings.lr_overrides())
    groups = engine.ds.optimizer.param_groups
    assert sorted({g["lr"] for g in groups}) == [1e-3]          # base frozen: only adapter groups exist
    engine.destroy()
    full = lora(only_optimize_lora=False, learning_rate=1e-3)
    model = load_lm(base_dir, "actor", full)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("embed_tokens" in n for n in trainable)
    q = load_lm(base_dir, "actor", lora("nf4", only_optimize_lora=False))
    assert not any(p.requires_grad for p in q.parameters() if is_4bit_param(p))   # 4-bit never trains


@pytest.mark.parametrize("case", [("none", 3), ("nf4", 0)], ids=_ids)
def test_reference_from_disabled_adapters_equals_a_frozen_copy(dist, base_dir, case):
    quantization, stage = case
    actor = policy_engine(base_dir, quantization, stage)
    train_steps(actor, steps=3)                                   # adapters far from zero
    ref_copy = build_inference_engine(
        "reference", lambda: PolicyModel(load_lm(base_dir, "reference", lora(quantization),
                                                 quantize=quantization != "none")),
        ZERO[stage], micro_batch_size=2, precision="fp32")
    ids, mask = batch(seed=11)
    actor.eval()
    with torch.no_grad():
        from_actor = ReferenceFromActor(actor)(ids, mask, num_scored=6)["logprobs"]
        separate = ref_copy(ids, mask, num_scored=6)["logprobs"]
        with_adapters = actor(ids, mask, num_scored=6)["logprobs"]
    assert torch.equal(from_actor, separate)
    assert not torch.allclose(with_adapters, separate, atol=1e-3)     # the adapters do matter
    actor.destroy()
    ref_copy.destroy()


def test_disabled_adapters_need_adapters(base_dir):
    plain = PolicyModel(load_lm(base_dir, "actor", lora(r=0)))
    ids, mask = batch()
    with pytest.raises(ValueError, match="no LoRA adapters"):
        plain(ids, mask, disable_adapters=True)


def test_cpu_inference_repack_is_off_so_gradients_survive_eval(base_dir):
    """bitsandbytes' CPU backend repacks a 4-bit weight at its first eval/no-grad forward into a layout
    that returns no gradient through the base (and moves outputs by ~0.3%); PPO scores under no_grad
    before training, so the loader turns the repack off. Gradients after an eval pass equal those of
    a model that never ran one."""
    torch.manual_seed(0)
    a = PolicyModel(load_lm(base_dir, "actor", lora("nf4")))
    torch.manual_seed(0)
    b = PolicyModel(load_lm(base_dir, "actor", lora("nf4")))
    layers = [m for m in a.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    ids, mask = batch()
    a.eval()
    with torch.no_grad():
        a(ids, mask)                                         # the pass that would repack
    for model in (a, b):
        model.train()
        (-model(ids, mask)["logprobs"].mean()).backward()
    first = "lm.model.layers.0.self_attn.q_proj.lora_B.default.weight"   # reached only through later bases
    ga, gb = a.get_parameter(first).grad, b.get_parameter(first).grad
    assert ga is not None and ga.abs().sum() > 0
    assert torch.allclose(ga, gb, atol=1e-6)


def test_pinned_device_makes_deepspeeds_move_a_check(base_dir):
    model = PolicyModel(load_lm(base_dir, "actor", lora("nf4")))
    with pinned_device(model, torch.device("cpu")):
        assert model.to(torch.device("cpu")) is model            # what deepspeed.initialize calls
        with pytest.raises(RuntimeError, match="refusing to cast a 4-bit model"):
            model.to(torch.bfloat16)
    assert "to" not in model.__dict__                             # nn.Module.to is back


def _gen_inputs(tok):
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in ("describe the cat", "tell me about the river please")]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc.input_ids, enc.attention_mask


def test_hybrid_generates_with_fused_adapters_at_zero3_like_the_unfused_model(dist, base_dir):
    tok = load_tokenizer(base_dir)
    actor = policy_engine(base_dir, "none", 3)
    train_steps(actor, steps=3)
    hybrid = HybridEngine(actor)
    assert hybrid.merge_fn is merged_lora_copy
    ids, mask = _gen_inputs(tok)
    settings = GenerationSettings(max_new_tokens=10, do_sample=False)
    fused = hybrid.generate(ids, mask, settings, tok.eos_token_id, tok.pad_token_id)
    # The same weights, unfused, in a plain (non-ZeRO) peft model.
    state = actor.full_state_dict()
    unfused = PolicyModel(load_lm(base_dir, "actor", lora()))
    unfused.load_state_dict(state)
    unfused.eval()
    expected = hf_generate(unfused.lm, ids, mask, settings, tok.eos_token_id, tok.pad_token_id)
    assert torch.equal(fused, expected)
    # And the fused copy computes the same function (not just the same argmax).
    copy = merged_lora_copy(actor)
    with torch.no_grad():
        a = copy(input_ids=fused, attention_mask=torch.ones_like(fused)).logits
        b = unfused.lm(input_ids=fused, attention_mask=torch.ones_like(fused)).logits
    assert torch.allclose(a, b, atol=1e-4)
    with adapters_disabled(unfused.lm), torch.no_grad():
        c = unfused.lm(input_ids=fused, attention_mask=torch.ones_like(fused)).logits
    assert not torch.allclose(a, c, atol=1e-3)                    # the adapters were fused in
    actor.destroy()


def test_hybrid_with_a_4bit_base_generates_unfused_with_the_engines_model(dist, base_dir):
    tok = load_tokenizer(base_dir)
    actor = policy_engine(base_dir, "nf4", 0)
    train_steps(actor)
    hybrid = HybridEngine(actor)
    ids, mask = _gen_inputs(tok)
    settings = GenerationSettings(max_new_tokens=10, do_sample=False)
    out = hybrid.generate(ids, mask, settings, tok.eos_token_id, tok.pad_token_id)
    assert hybrid._plain is None                                  # no generation copy was built
    actor.eval()
    assert torch.equal(out, hf_generate(actor.module.lm, ids, mask, settings, tok.eos_token_id, tok.pad_token_id))
    assert sum(is_4bit_param(p) for p in actor.module.parameters()) > 0
    actor.destroy()


@pytest.mark.parametrize("case", [("none", 3), ("nf4", 0)], ids=_ids)
def test_export_merged_for_transformers_and_adapter_for_peft(dist, base_dir, tmp_path, case):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization, stage = case
    tok = load_tokenizer(base_dir)
    actor = policy_engine(base_dir, quantization, stage)
    train_steps(actor, steps=3)
    out = str(tmp_path / "ppo")
    export_pretrained(actor, "lm", out, tok, {"stage": "test"})
    ids, mask = batch(seed=5)
    actor.eval()
    with torch.no_grad():
        trained = actor(ids, mask, num_scored=8)["logprobs"]
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(merged.config, "quantization_config", None) is None
    assert not any("lora" in n for n, _ in merged.named_parameters())
    kw = {}
    if quantization != "none":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.float32,
                                                       llm_int8_skip_modules=["lm_head", "score"])
    base = AutoModelForCausalLM.from_pretrained(base_dir, **kw)
    for m in base.modules():                                     # as rlhf_ds loads 4-bit models
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    with_adapter = PeftModel.from_pretrained(base, f"{out}/adapter")
    with torch.no_grad():
        from_merged = PolicyModel(merged.eval())(ids, mask, num_scored=8)["logprobs"]
        from_adapter = PolicyModel(with_adapter.eval())(ids, mask, num_scored=8)["logprobs"]
    assert torch.allclose(from_merged, trained, atol=1e-4)
    assert torch.allclose(from_adapter, trained, atol=1e-4)
    actor.destroy()


def test_reward_model_export_restores_the_trained_head(dist, reward_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(reward_dir)
    engine = train_engine("reward", lambda: ScalarHeadModel(load_scalar(reward_dir, "reward", lora())), 2)
    before = engine.module.model.score.weight.detach().clone()
    engine.train()
    for seed in range(2):
        ids, mask = batch(seed=seed)
        engine.backward(-engine(ids, mask)["scores"].mean())
        engine.step()
    assert not torch.equal(before, engine.module.model.score.weight)       # the head trains with the adapters
    out = str(tmp_path / "rm")
    export_pretrained(engine, "model", out, tok, {"stage": "reward"})
    ids, mask = batch(seed=9)
    engine.eval()
    with torch.no_grad():
        trained = engine(ids, mask)["scores"]
        merged = ScalarHeadModel(AutoModelForSequenceClassification.from_pretrained(out).eval())(ids, mask)["scores"]
        peft_model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(reward_dir),
                                               f"{out}/adapter").eval()
        from_adapter = ScalarHeadModel(peft_model.base_model.model)(ids, mask)["scores"]
    assert torch.allclose(merged, trained, atol=1e-4)
    assert torch.allclose(from_adapter, trained, atol=1e-4)
    engine.destroy()


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_critic_and_reward_share_one_backbone(dist, reward_dir, quantization):
    settings = lora(quantization)
    critic = train_engine("critic", lambda: CriticWithRewardHead(load_scalar(reward_dir, "critic", settings),
                                                                 read_head(reward_dir)), 0)
    critic.train()
    for seed in range(2):
        ids, mask = batch(seed=seed)
        critic.backward(critic(ids, mask, num_values=5)["values"].pow(2).mean())
        critic.step()
    reward = ScalarHeadModel(load_scalar(reward_dir, "reward_frozen", settings, quantize=quantization != "none"))
    ids, mask = batch(seed=4)
    critic.eval()
    with torch.no_grad():
        shared = critic(ids, mask, as_reward=True)["scores"]
        own = reward.eval()(ids, mask)["scores"]
        values = critic(ids, mask)["scores"]
    assert torch.allclose(shared, own, atol=1e-5)
    assert not torch.allclose(values, own, atol=1e-3)               # the critic itself has moved
    critic.destroy()
    with pytest.raises(LoRAConfigError, match="critic_init must be reward"):
        check_lora_config(lora(share_critic_reward_backbone=True), 0, critic_init="sft")
    with pytest.raises(LoRAConfigError, match="only_optimize_lora=false"):
        check_lora_config(lora(share_critic_reward_backbone=True, only_optimize_lora=False), 0)


@pytest.mark.parametrize("case", [("nf4", 0), ("nf4", 2)], ids=_ids)
def test_qlora_checkpoint_resumes_exactly(dist, base_dir, tmp_path, case):
    """DeepSpeed checkpoints of a 4-bit model carry bitsandbytes' quantisation constants as extra keys;
    resume loads them non-strictly and continues exactly (adapters, optimizer state)."""
    quantization, stage = case
    engine = policy_engine(base_dir, quantization, stage)
    train_steps(engine, steps=2)
    engine.save_checkpoint(str(tmp_path), "step2")
    train_steps(engine, steps=1, seed=7)
    resumed = policy_engine(base_dir, quantization, stage)
    resumed.load_checkpoint(str(tmp_path), "step2")
    train_steps(resumed, steps=1, seed=7)
    ids, mask = batch(seed=8)
    for e in (engine, resumed):
        e.eval()
    with torch.no_grad():
        assert torch.equal(engine(ids, mask)["logprobs"], resumed(ids, mask)["logprobs"])
    engine.destroy()
    resumed.destroy()
