"""LoRA at ZeRO-3 on 2 ranks through the deepspeed launcher: SFT, reward model and PPO (reference from the
actor with adapters disabled, hybrid generation with fused adapters), and the SFT adapters' update equal
to one rank's with accumulation (adapters and base partitioned, gradients over global counts)."""
import json
import os
import shutil

import pytest
from safetensors.torch import load_file

from rlhf_ds.pipeline import create_rlhf_pipeline

from ..conftest import TINY
from ..multirank.launcher import REPO, run_deepspeed

pytestmark = pytest.mark.multirank
LORA = ["--lora.r=4", "--lora.alpha=8", "--lora.apply_to=sft,reward,actor,critic", "--sft.max_steps=2",
        "--sft.eval_interval=100", "--reward.max_steps=1", "--ppo.iterations=1", "--ppo.rollout_batch_size=8",
        "--ppo.minibatch_size=4", "--generation.max_new_tokens=8"]


def _small(src, dst, n):
    with open(src) as f, open(dst, "w") as g:
        g.writelines(line for _, line in zip(range(n), f))
    return dst


def test_lora_zero3_pipeline_on_two_ranks(tmp_path, demo_task):
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "two")
    shutil.copytree(demo_task, os.path.join(out, "task"))
    data = os.path.join(out, "task", "data")
    small = [f"--reward.eval_path={_small(os.path.join(data, 'preference_eval.jsonl'), str(tmp_path / 'pe.jsonl'), 8)}",
             f"--ppo.eval_prompt_path={_small(os.path.join(data, 'eval_prompts.jsonl'), str(tmp_path / 'ep.jsonl'), 4)}"]
    proc = run_deepspeed(os.path.join(REPO, "launch", "train_ppo.py"),
                         ["--deepspeed", "configs/zero3.json", "--save_dir", out, *TINY, *LORA, *small,
                          "--sft.micro_batch_size=4"], ranks=2, timeout=900)
    log = proc.stdout + proc.stderr
    assert "2 rank(s)" in log and "ZeRO-3" in log
    assert "reference = actor with adapters disabled" in log
    summary = json.load(open(os.path.join(out, "logs", "summary.json")))
    assert summary["world_size"] == 2 and isinstance(summary["gold_reward_ppo"], float)
    for stage in ("sft", "reward_model", "ppo"):
        assert os.path.isfile(os.path.join(out, stage, "adapter", "adapter_model.safetensors")), stage
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "ppo"))

    # The same SFT steps on one rank (no accumulation) give the same adapters.
    one = str(tmp_path / "one")
    shutil.copytree(demo_task, os.path.join(one, "task"))
    pipe = create_rlhf_pipeline(None, [*TINY, f"--save_dir={one}", f"--deepspeed.config={REPO}/configs/zero3.json",
                                       *LORA, "--sft.micro_batch_size=16"])
    pipe.run_sft()
    a = load_file(os.path.join(one, "sft", "last", "adapter", "adapter_model.safetensors"))
    b = load_file(os.path.join(out, "sft", "last", "adapter", "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(k.endswith("lora_B.weight") for k in a)
    for k in a:
        if k.endswith("lora_B.weight"):                       # B starts at zero: its value is the update
            assert float(a[k].norm()) > 0, k
            assert float((a[k] - b[k]).norm() / a[k].norm()) < 5e-3, k
        else:
            # A starts random and gets a zero gradient at step 1 (B = 0): at step 2 Adam moves each entry
            # by about +-lr whatever the gradient's size, so entries whose tiny gradient changes sign with
            # the summation order differ by ~2 lr. Bounded relative to A itself.
            assert float((a[k] - b[k]).norm() / a[k].norm()) < 2e-2, k
