"""SFT, reward-model and PPO steps through the real trainers with LoRA (ZeRO-3) and with QLoRA (NF4 base,
ZeRO-2), one rank in this process: losses finite, exports merged and as adapters, and the PPO actor's
base untouched (its adapter on the SFT model reproduces the merged export)."""
import json
import math
import os
import shutil

import pytest
import torch

from rlhf_ds.pipeline import create_rlhf_pipeline

from ..conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--sft.max_steps=1", "--reward.max_steps=1", "--ppo.iterations=1", "--ppo.rollout_batch_size=8",
        "--ppo.minibatch_size=4", "--generation.max_new_tokens=8", "--lora.r=4", "--lora.alpha=8",
        "--lora.apply_to=sft,reward,actor,critic", "--lora.learning_rate=1e-3"]


def _head(src: str, dst: str, n: int) -> str:
    with open(src) as f, open(dst, "w") as g:
        for _, line in zip(range(n), f):
            g.write(line)
    return dst


def _run(tmp_path, demo_task, name, extra):
    out = str(tmp_path / name)
    shutil.copytree(demo_task, os.path.join(out, "task"))
    data = os.path.join(out, "task", "data")
    small = [f"--reward.eval_path={_head(os.path.join(data, 'preference_eval.jsonl'), str(tmp_path / 'pe.jsonl'), 8)}",
             f"--ppo.eval_prompt_path={_head(os.path.join(data, 'eval_prompts.jsonl'), str(tmp_path / 'ep.jsonl'), 4)}"]
    pipe = create_rlhf_pipeline(None, [*TINY, f"--save_dir={out}", *FAST, *small, *extra])
    summary = pipe.run_full_pipeline()
    rows = [json.loads(line) for line in open(os.path.join(out, "logs", "metrics.jsonl"))]
    return out, summary, rows


def _logprobs(model, ids):
    from rlhf_ds.models.policy import PolicyModel

    with torch.no_grad():
        return PolicyModel(model.eval())(ids, torch.ones_like(ids), num_scored=6)["logprobs"]


@pytest.mark.parametrize("name,extra", [
    ("lora_zero3", [f"--deepspeed.config={REPO}/configs/zero3.json"]),
    ("qlora_zero2", [f"--deepspeed.config={REPO}/configs/zero2.json", "--lora.quantization=nf4",
                     "--lora.share_critic_reward_backbone=true"]),
])
def test_sft_rm_and_ppo_steps_with_adapters(tmp_path, demo_task, caplog, name, extra):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    out, summary, rows = _run(tmp_path, demo_task, name, extra)
    for key in ("sft_eval_loss", "rm_eval_accuracy", "gold_reward_ppo", "kl_final"):
        assert isinstance(summary[key], float) and math.isfinite(summary[key]), key
    ppo = next(r for r in rows if r["stage"] == "ppo" and r["step"] == 1 and "policy_loss" in r)
    assert all(math.isfinite(ppo[k]) for k in ("policy_loss", "value_loss", "kl", "reward_mean"))
    sft_loss = next(r for r in rows if r["stage"] == "sft")["loss"]
    assert math.isfinite(sft_loss)
    for stage in ("sft", "reward_model", "ppo"):
        assert os.path.isfile(os.path.join(out, stage, "adapter", "adapter_config.json")), stage
        meta = json.load(open(os.path.join(out, stage, "rlhf_ds.json")))
        assert meta["lora"]["r"] == 4
    AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "reward_model"))
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(out, "ppo"))
    # The PPO actor trained only its adapters on the SFT model: SFT model + PPO adapter = PPO export.
    kw = {}
    if "--lora.quantization=nf4" in extra:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.float32,
                                                       llm_int8_skip_modules=["lm_head", "score"])
    sft = AutoModelForCausalLM.from_pretrained(os.path.join(out, "sft"), **kw)
    for m in sft.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    ids = torch.randint(5, 500, (2, 14), generator=torch.Generator().manual_seed(0))
    with_adapter = PeftModel.from_pretrained(sft, os.path.join(out, "ppo", "adapter"))
    assert torch.allclose(_logprobs(with_adapter, ids), _logprobs(merged, ids), atol=1e-4)
