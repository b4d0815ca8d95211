"""On-policy means the first update's ratio is exactly 1: the log-probs the update computes equal the
ones recorded at rollout time. Dropout left on in the update (a model's own, or LoRA's) breaks that
(issue 14, item 2): measured before the fix, ratio_mean 1.033 with the model's attention dropout at 0.3,
1.004 with LoRA dropout at 0.3."""
import json
import os
import shutil

import pytest

from rlhf_ds.pipeline import create_rlhf_pipeline

from ..conftest import TINY


def _with_dropout(src: str, dst: str, p: float) -> str:
    """A copy of the demo's base model whose config turns on its attention dropout."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    cfg = json.load(open(path))
    cfg["attention_dropout"] = p
    json.dump(cfg, open(path, "w"))
    return dst


def _first_update(tmp_path, demo_task, name, model_dropout, extra):
    out = str(tmp_path / name)
    shutil.copytree(demo_task, os.path.join(out, "task"))
    base = _with_dropout(os.path.join(demo_task, "base_model"), str(tmp_path / f"{name}_base"), model_dropout)
    # One epoch over one minibatch: the only update sees exactly the policy that sampled the data. Two
    # micro-batches of 8, so that the update runs its own forward (one micro-batch would reuse step 4's,
    # rl_onestep.py, where the ratio is 1 by construction).
    pipe = create_rlhf_pipeline(None, [*TINY, f"--save_dir={out}", "--data.demo_eval_prompts=4",
                                       "--ppo.iterations=1", "--ppo.ppo_epochs=1", "--ppo.minibatch_size=16",
                                       "--ppo.micro_batch_size=8",
                                       f"--model.sft_model_path={base}", f"--model.reward_model_path={base}",
                                       *extra])
    pipe.run_ppo_training()
    pipe.finish()
    rows = [json.loads(line) for line in open(os.path.join(out, "logs", "metrics.jsonl"))]
    return next(r for r in rows if r["stage"] == "ppo" and r["step"] == 1)


@pytest.mark.parametrize("name, model_dropout, extra", [
    ("model_dropout", 0.3, []),
    ("lora_dropout", 0.0, ["--lora.r=4", "--lora.alpha=8", "--lora.dropout=0.3", "--lora.apply_to=actor,critic"]),
])
def test_first_update_ratio_is_exactly_one_with_dropout_configured(tmp_path, demo_task, name, model_dropout, extra):
    first = _first_update(tmp_path, demo_task, name, model_dropout, extra)
    # Exactly: the update's forward is the rollout's forward on the same rows (measured 1.0, 1.0, 0.0).
    assert first["ratio_mean"] == 1.0 and first["ratio_max"] == 1.0
    assert first["approx_kl"] == 0.0 and first["clip_fraction"] == 0.0
