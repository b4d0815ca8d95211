"""DPO with adapters, one rank in this process: under LoRA the reference is the policy with its adapters
disabled, and after real DPO steps it still equals a separate frozen copy of the SFT model; QLoRA DPO (NF4
base, ZeRO-2) trains on CPU and exports."""
import math
import os
import shutil

import torch

from rlhf_ds.engine import build_train_engine
from rlhf_ds.pipeline import create_rlhf_pipeline
from rlhf_ds.trainers.dpo import dpo_stage, pair_logps
from rlhf_ds.trainers.reference import LiveReference, reference_engine

from ..conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args(out, demo_task, *extra):
    shutil.copytree(demo_task, os.path.join(out, "task"))
    return [*TINY, f"--save_dir={out}", f"--model.sft_model_path={out}/task/base_model", "--dpo.batch_size=8",
            "--dpo.max_steps=2", "--data.demo_eval_prompts=4", "--lora.r=4", "--lora.alpha=8",
            "--lora.apply_to=actor", "--lora.learning_rate=5e-3", *extra]


def test_lora_reference_is_the_frozen_sft_model_after_training(tmp_path, demo_task):
    out = str(tmp_path / "run")
    pipe = create_rlhf_pipeline(None, _args(out, demo_task, f"--deepspeed.config={REPO}/configs/zero3.json"))
    ctx, base = pipe._context(), os.path.join(out, "task", "base_model")
    stage = dpo_stage(ctx, base, os.path.join(out, "task", "data", "preference.jsonl"))
    assert "adapters disabled" in stage.describe
    engine = build_train_engine("dpo", stage.model, ctx.ds_config, micro_batch_size=8, grad_accum=1,
                                precision=ctx.precision, gradient_clipping=1.0, lr=5e-3, weight_decay=0.0,
                                total_steps=3, warmup_steps=0, schedule="constant",
                                lr_overrides=None)
    data = stage.train_data
    for step in range(3):                               # real DPO steps move the adapters
        batch = data.collate([data[i] for i in range(8 * step, 8 * step + 8)]).to(engine.device)
        loss, _ = stage.loss(engine, batch, stage.prepare(engine, batch))
        engine.backward(loss)
        engine.step()
    batch = data.collate([data[i] for i in range(100, 108)]).to(engine.device)
    with torch.no_grad():
        policy = pair_logps(engine, batch)
    frozen = LiveReference(reference_engine(ctx, base, 8))
    want = frozen.logps(None, *batch.flat())
    frozen.destroy()
    got = LiveReference().logps(engine, *batch.flat())   # the stage's reference: the trained policy, adapters off
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    trained = torch.stack([policy["chosen"], policy["rejected"]], dim=1).reshape(-1)
    assert float((trained - want).abs().max()) > 1e-3, "the adapters did not change the policy"
    engine.destroy()


def test_qlora_dpo_trains_on_cpu(tmp_path, demo_task, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "run")
    pipe = create_rlhf_pipeline(None, _args(out, demo_task, f"--deepspeed.config={REPO}/configs/zero2.json",
                                            "--lora.quantization=nf4"))
    summary = pipe.run_dpo_pipeline()
    log = capsys.readouterr().out
    assert "reference: the policy with its LoRA adapters disabled" in log
    for key in ("dpo_eval_loss", "dpo_eval_accuracy", "gold_reward_final", "kl_final"):
        assert isinstance(summary[key], float) and math.isfinite(summary[key]), key
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "dpo"))
    if os.path.isdir(os.path.join(out, "dpo", "adapter")):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(os.path.join(out, "task", "base_model")),
                                  os.path.join(out, "dpo", "adapter"))
