"""PPO's optional parts through the real trainer (ZeRO-3, one rank, in this process): a pretraining
(ptx) loss mix, an EMA copy of the actor, reward normalisation and clipping, the no-EOS penalty, the
adaptive KL controller, and the warning that the clip never acts with one epoch and one minibatch."""
import json
import os
import shutil

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhf_ds.pipeline import create_rlhf_pipeline

from ..conftest import TINY


def _run(tmp_path, demo_task, name, extra):
    out = str(tmp_path / name)
    shutil.copytree(demo_task, os.path.join(out, "task"))
    base = os.path.join(demo_task, "base_model")
    pipe = create_rlhf_pipeline(None, [*TINY, f"--save_dir={out}", "--data.demo_eval_prompts=4",
                                       f"--model.sft_model_path={base}", f"--model.reward_model_path={base}", *extra])
    pipe.run_ppo_training()
    summary = pipe.finish()
    rows = [json.loads(line) for line in open(os.path.join(out, "logs", "metrics.jsonl"))]
    return out, [r for r in rows if r["stage"] == "ppo" and "reward_mean" in r], summary


def test_optional_parts(tmp_path, demo_task, capsys):
    out, rows, summary = _run(tmp_path, demo_task, "options", [
        "--ppo.iterations=2", "--ppo.ptx_coef=0.5", "--ppo.ema_beta=0.5", "--ppo.reward_normalize=true",
        "--ppo.reward_clip=0.5", "--ppo.no_eos_penalty=-3", "--generation.max_new_tokens=3",
        "--ppo.adaptive_kl=true", "--ppo.kl_target=0.01", "--ppo.kl_horizon=100"])
    assert all(r["ptx_loss"] > 0 for r in rows)                     # the SFT loss was mixed in
    # An adaptive controller moves beta away from its start when KL is off target.
    assert rows[-1]["kl_coef"] != rows[0]["kl_coef"]
    # 3 new tokens leave most responses without EOS: their score is the penalty, the rest are clipped.
    assert rows[0]["eos_fraction"] < 1.0
    ema = load_file(os.path.join(out, "ppo_ema", "model.safetensors"))
    final = load_file(os.path.join(out, "ppo", "model.safetensors"))
    base = load_file(os.path.join(demo_task, "base_model", "model.safetensors"))
    k = "model.layers.0.mlp.up_proj.weight"
    # With beta 0.5 over the run's optimizer steps the EMA lies strictly between the start and the end.
    assert not torch.equal(ema[k], final[k]) and not torch.equal(ema[k], base[k])
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "ppo_ema"))
    assert summary["gold_reward_ppo"] is not None


def test_clip_warning_with_one_update_per_rollout(tmp_path, demo_task, capsys):
    _run(tmp_path, demo_task, "noclip", ["--ppo.iterations=1", "--ppo.ppo_epochs=1", "--ppo.minibatch_size=16"])
    assert "the clip never acts" in capsys.readouterr().out
