"""The memory estimate: parameter counts against real models, byte counts against hand-computed values
and a real 4-bit model, the CLI on the 7B example, and the pipeline's refusal."""
import dataclasses
import logging
import os

import pytest
import torch

from rlhf_ds.config import load_config
from rlhf_ds.lora_settings import LoRASettings
from rlhf_ds.memory import OutOfMemoryRefusal, check_before_run, find_architecture, main
from rlhf_ds.memory_estimate import GiB, Architecture, Plan, bytes_per_4bit_param, estimate, kv_cache_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "configs", "examples", "qlora_7b_single_gpu.yaml")
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=160, vocab_size=300, max_position_embeddings=64)


@pytest.mark.parametrize("kind,tied", [("llama", True), ("llama", False), ("qwen2", False), ("mistral", False)])
def test_parameter_count_matches_transformers(kind, tied):
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config_cls = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig"}[kind]
    config = getattr(transformers, config_cls)(**SMALL, tie_word_embeddings=tied, pad_token_id=0)
    arch = Architecture.from_hf_config(config.to_dict())
    lm = AutoModelForCausalLM.from_config(config)
    assert arch.params("lm") == sum(p.numel() for p in lm.parameters())
    config.num_labels = 1
    scalar = AutoModelForSequenceClassification.from_config(config)
    assert arch.params("scalar") == sum(p.numel() for p in scalar.parameters())


def test_lora_and_4bit_counts_match_a_real_model(base_dir):
    """Adapter parameters and the bytes a real bitsandbytes NF4 model holds (packed weights + block scales,
    double quantised) against the formulas."""
    import json

    from rlhf_ds.models.lora import load_lm
    from rlhf_ds.models.quantization import quantized_nbytes

    arch = Architecture.from_hf_config(json.load(open(os.path.join(base_dir, "config.json"))))
    model = load_lm(base_dir, "actor", LoRASettings(r=8, quantization="nf4", apply_to=frozenset({"actor"})))
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert adapters == arch.lora_params(8, "all-linear")
    four_bit = [p for p in model.parameters() if type(p).__name__ == "Params4bit"]
    assert sum(p.quant_state.shape.numel() for p in four_bit) == arch.quantizable_params
    real = sum(quantized_nbytes(p) for p in four_bit)
    formula = arch.quantizable_params * bytes_per_4bit_param(True)
    # The formula leaves out each tensor's 256-entry code tables (bytes, not per parameter).
    assert formula <= real <= formula + len(four_bit) * 2 * 256 * 4 + 64


def test_estimate_by_hand_for_a_small_config():
    arch = Architecture(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=160,
                        vocab_size=300, tie_word_embeddings=False)
    # Per block: q 64x64, k and v 64x32, o 64x64, gate/up/down 64x160: 4096*2 + 2048*2 + 10240*3 = 43008
    assert arch.block_linear_weights == 43008
    p = 300 * 64 * 2 + 2 * (43008 + 128) + 64                 # embeddings, lm head, blocks (+ 2 norms), final norm
    assert arch.params("lm") == p == 124736
    assert arch.lora_params(4, "all-linear") == 2 * 4 * (128 + 96 + 96 + 128 + 224 * 3)
    assert arch.lora_params(4, ("q_proj", "v_proj")) == 2 * 4 * (128 + 96)
    assert bytes_per_4bit_param(False) == 0.5 + 4 / 64
    assert bytes_per_4bit_param(True) == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256))

    full = Plan(precision="bf16", zero_stage=0, micro_batch=2, max_length=32, prompt_length=16, new_tokens=16,
                rollout_per_rank=4)
    est = estimate(arch, full, "ppo", device_type="cpu")
    by = {(i.model, i.component): i.nbytes for i in est.items}
    scalar = arch.params("scalar")
    assert by[("actor", "weights")] == p * 2
    assert by[("actor", "gradients")] == p * 2
    assert by[("actor", "optimizer states")] == p * 12
    assert by[("critic", "optimizer states")] == scalar * 12
    assert by[("reference", "weights")] == p * 2 and by[("reward", "weights")] == scalar * 2
    assert kv_cache_bytes(arch, full, 4, 32) == 2 * 2 * 2 * 16 * 32 * 4 * 2
    assert est.phase_total("generation") == 2 * 2 * 2 * 16 * 32 * 4 * 2      # no generation copy below ZeRO-3
    assert est.peak == est.static + max(est.phase_total("generation"), est.phase_total("training"))

    # ZeRO-3 over 4 ranks: weights / 4, gradients / 4, optimizer / 4, plus the hybrid engine's full copy.
    z3 = Plan(**{**full.__dict__, "zero_stage": 3, "world_size": 4})
    by3 = {(i.model, i.component): i.nbytes for i in estimate(arch, z3, "ppo").items}
    assert by3[("actor", "weights")] == p * 2 / 4 and by3[("actor", "optimizer states")] == p * 12 / 4
    assert estimate(arch, z3, "ppo").phases["generation"][1].nbytes == p * 2

    # QLoRA: 4-bit bases, adapters trained, reference from the actor (no item), reward 4-bit.
    q = Plan(**{**full.__dict__, "lora": LoRASettings(r=4, apply_to=frozenset({"actor", "critic"}),
                                                      quantization="nf4")})
    est_q = estimate(arch, q, "ppo")
    byq = {(i.model, i.component): i.nbytes for i in est_q.items}
    four = arch.quantizable_params * bytes_per_4bit_param(True)
    assert byq[("actor", "weights")] == pytest.approx(four + (p - arch.quantizable_params) * 2)
    assert byq[("actor", "optimizer states")] == arch.lora_params(4, "all-linear") * 12
    assert byq[("critic", "optimizer states")] == (arch.lora_params(4, "all-linear") + 64) * 12   # + value head
    assert ("reference", "weights") not in byq and ("reward", "weights") in byq
    shared = Plan(**{**q.__dict__, "lora": dataclasses.replace(q.lora, share_critic_reward_backbone=True)})
    assert ("reward", "weights") not in {(i.model, i.component) for i in estimate(arch, shared, "ppo").items}


def test_activations_shrink_with_checkpointing_and_count_the_scored_logits():
    arch = Architecture(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=4, head_dim=16, intermediate_size=128,
                        vocab_size=1000)
    plan = Plan(precision="fp32", micro_batch=2, max_length=40, prompt_length=24, new_tokens=16)
    per_block = 7 * 64 + 4 * 64 + 4 * 128
    est = estimate(arch, plan, "ppo")
    logits = 2 * 17 * 1000 * (4 + 8)                     # R + 1 scored positions, dtype + fp32 softmax + grad
    assert est.phases["training"][0].nbytes == 2 * 40 * 4 * per_block * 4 + logits
    ckpt = estimate(arch, Plan(**{**plan.__dict__, "gradient_checkpointing": True}), "ppo")
    assert ckpt.phases["training"][0].nbytes == 2 * 40 * (4 * 64 + per_block) * 4 + logits


def test_cli_prints_the_7b_example_offline_and_says_whether_it_fits(capsys):
    assert main(["--config", EXAMPLE, "--device-memory-gb", "24"]) == 0
    out = capsys.readouterr().out
    for word in ("PPO stage", "meta-llama/Llama-2-7b-hf", "6.74B params", "nf4 4-bit base", "adapters",
                 "optimizer states", "KV cache", "activations", "reference: the actor with adapters disabled",
                 "fits in 24.0 GiB"):
        assert word in out, word
    assert main(["--config", EXAMPLE, "--device-memory-gb", "12", "--stage", "ppo"]) == 1
    assert "EXCEEDS the device's 12.0 GiB" in capsys.readouterr().out
    # Full fine-tuning of the same model, for scale: far beyond one GPU.
    assert main(["--config", EXAMPLE, "--device-memory-gb", "24", "--stage", "ppo", "--lora.r=0",
                 "--lora.quantization=none"]) == 1


def test_7b_qlora_estimate_is_in_the_expected_range():
    cfg = load_config(EXAMPLE)
    arch, origin = find_architecture(cfg)
    assert arch.params() == 6738415616                     # Llama-2-7B's published parameter count
    assert "llama2_7b_config.json" in origin


class _Dist:
    world_size, local_world_size = 1, 1
    device = torch.device("cpu")


def test_pipeline_check_refuses_with_the_numbers(base_dir, caplog):
    cfg = load_config(None, ["--ppo.rollout_batch_size=64", "--ppo.minibatch_size=32"])
    ds = {"zero_optimization": {"stage": 3}}
    log = logging.getLogger("test_memory")
    with pytest.raises(OutOfMemoryRefusal, match=r"ppo: the memory estimate .* GiB per rank exceeds the device "
                                                 r"memory \(0\.00 GiB\)(.|\n)*KV cache"):
        check_before_run(cfg, ds, _Dist(), log, ["ppo"], model_dir=base_dir, device_memory=1024)
    os.environ["RLHF_DS_SKIP_MEMORY_CHECK"] = "1"
    try:
        with caplog.at_level(logging.WARNING, logger="test_memory"):
            check_before_run(cfg, ds, _Dist(), log, ["ppo"], model_dir=base_dir, device_memory=1024)
        assert "exceeds the device memory" in caplog.text
    finally:
        del os.environ["RLHF_DS_SKIP_MEMORY_CHECK"]
    check_before_run(cfg, ds, _Dist(), log, ["sft", "reward", "ppo"], model_dir=base_dir, device_memory=64 * GiB)
