"""A one-step iteration (ppo_epochs=1, one minibatch, one micro-batch per rank) runs the actor's and the
critic's forward once, for the old log-probs/values and the update together (trainers/rl_onestep.py).
That must change nothing: the same run with the forward run twice (the general path) gives bit-identical
weights and per-iteration figures, for PPO (critic, KL in the reward) and GRPO (KL loss, groups)."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rlhf_ds.pipeline import create_rlhf_pipeline
from rlhf_ds.trainers import rl_loop

from ..conftest import TINY

# Figures that are timings, not results.
TIMING = ("time_", "tokens_per_s", "generation_tokens_per_s")


def _run(tmp_path, demo_task, name, recipe, extra, monkeypatch, share: bool):
    calls = []
    real = rl_loop.shares_forward

    def shares_forward(steps, accum):
        calls.append(real(steps, accum))
        return share and calls[-1]

    monkeypatch.setattr(rl_loop, "shares_forward", shares_forward)
    out = str(tmp_path / name)
    shutil.copytree(demo_task, os.path.join(out, "task"))
    base = os.path.join(demo_task, "base_model")
    pipe = create_rlhf_pipeline(None, [*TINY, f"--save_dir={out}", "--data.demo_eval_prompts=4", "--ppo.iterations=2",
                                       "--ppo.ppo_epochs=1", "--ppo.rollout_batch_size=8", "--ppo.minibatch_size=8",
                                       "--ppo.micro_batch_size=0", f"--model.sft_model_path={base}",
                                       f"--model.reward_model_path={base}", *extra], recipe=recipe)
    pipe.run_rl_training()
    assert calls == [True], "the configuration must be a one-step iteration"
    stage = "ppo" if recipe is None else recipe
    rows = [json.loads(line) for line in open(os.path.join(out, "logs", "metrics.jsonl"))]
    figures = [{k: v for k, v in r.items() if k != "time" and not k.startswith(TIMING)} for r in rows
               if r["stage"] == stage]
    weights = load_file(os.path.join(out, stage, "model.safetensors"))
    return figures, weights


@pytest.mark.parametrize("recipe, extra", [
    (None, []),                                               # PPO: critic, k1 KL in the reward
    ("grpo", ["--ppo.n_samples=4", "--ppo.rollout_batch_size=2"]),   # GRPO: KL loss, groups of 4
])
def test_shared_forward_changes_nothing(tmp_path, demo_task, monkeypatch, recipe, extra):
    if recipe == "grpo":
        extra = extra + ["--ppo.minibatch_size=8"]
    shared_figures, shared_weights = _run(tmp_path, demo_task, "shared", recipe, extra, monkeypatch, share=True)
    twice_figures, twice_weights = _run(tmp_path, demo_task, "twice", recipe, extra, monkeypatch, share=False)
    assert len(shared_figures) >= 2
    assert shared_figures == twice_figures
    assert shared_weights.keys() == twice_weights.keys()
    for k in shared_weights:
        assert torch.equal(shared_weights[k], twice_weights[k]), k
    # The run trained: the policy moved away from the base model.
    base = load_file(os.path.join(demo_task, "base_model", "model.safetensors"))
    assert any(not torch.equal(base[k], shared_weights[k]) for k in base if k in shared_weights)
