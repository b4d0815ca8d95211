"""One PPO iteration through the real trainer (ZeRO-3 engines, one rank, in this process) gives the
same losses with the kernels (`ppo.use_kernels=auto`), with the plain references, and with the fused
LM head that never materialises the logits."""
import json
import os
import shutil

import pytest

from rlhf_ds.pipeline import create_rlhf_pipeline

from ..conftest import TINY

COMPARED = ("policy_loss", "value_loss", "entropy", "kl", "reward_mean", "clip_fraction", "approx_kl",
            "response_length")


def _ppo_metrics(tmp_path, demo_task, name, extra):
    out = str(tmp_path / name)
    shutil.copytree(demo_task, os.path.join(out, "task"))
    base = os.path.join(demo_task, "base_model")
    pipe = create_rlhf_pipeline(None, [*TINY, f"--save_dir={out}", "--ppo.iterations=1", "--data.demo_eval_prompts=4",
                                       f"--model.sft_model_path={base}", f"--model.reward_model_path={base}", *extra])
    pipe.run_ppo_training()
    pipe.finish()
    rows = [json.loads(line) for line in open(os.path.join(out, "logs", "metrics.jsonl"))]
    return next(r for r in rows if r["stage"] == "ppo" and r["step"] == 1)


def test_kernels_reference_and_fused_head_agree(tmp_path, demo_task):
    ref = _ppo_metrics(tmp_path, demo_task, "reference", ["--ppo.use_kernels=reference"])
    fast = _ppo_metrics(tmp_path, demo_task, "kernels", ["--ppo.use_kernels=auto"])
    fused = _ppo_metrics(tmp_path, demo_task, "fused", ["--ppo.use_kernels=auto", "--model.fused_lm_head=true"])
    assert ref["value_loss"] > 0 and ref["entropy"] > 0       # the figures compared are real ones
    for other in (fast, fused):
        for key in COMPARED:
            assert other[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
