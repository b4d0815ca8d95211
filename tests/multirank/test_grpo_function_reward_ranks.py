"""GRPO with rewards from code is rank invariant: the arithmetic task's function sources (exact_match and
format_reward, reading the `answer` column) score the same completions, and one iteration of the loop's
steps 3-6 on 1 rank with 2 micro-batches equals 2 ranks with one each (weights, losses, per-source
means)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from .launcher import REPO, run_deepspeed

pytestmark = pytest.mark.multirank
SCRIPT = os.path.join(REPO, "tests", "multirank", "scripts", "grpo_function_reward_ranks.py")


@pytest.fixture(scope="module")
def arithmetic_task(tmp_path_factory):
    from rlhf_ds.tasks.arithmetic import prepare_arithmetic

    out = str(tmp_path_factory.mktemp("arith") / "task")
    prepare_arithmetic(out, seed=0, sft=64, prompts=32, eval_prompts=8)
    return out


def test_grpo_with_a_function_reward_one_rank_equals_two(tmp_path, arithmetic_task):
    out = {}
    for name, ranks in (("one", 1), ("two", 2)):
        prefix = str(tmp_path / name / "run")
        os.makedirs(os.path.dirname(prefix))
        run_deepspeed(SCRIPT, [arithmetic_task, prefix, "8"], ranks=ranks, timeout=600)
        out[name] = (torch.load(f"{prefix}.pt"), json.load(open(f"{prefix}.json")))
    (wa, sa), (wb, sb) = out["one"], out["two"]
    # Each group holds 2 right answers, 1 wrong number and 1 unformed one: exact_match 0.5, format 0.75.
    assert sa["reward/exact_match"] == sb["reward/exact_match"] == 0.5
    assert sa["reward/format_reward"] == sb["reward/format_reward"] == 0.75
    assert sa["sum_raw"] == pytest.approx(16 * (0.5 + 0.1 * 0.75)) and sb["sum_raw"] == pytest.approx(sa["sum_raw"])
    assert sa["sum_advantage"] > 0 and sb["sum_advantage"] == pytest.approx(sa["sum_advantage"], rel=1e-6)
    for key in ("actor_grad_norm", "policy_loss", "kl_loss", "clip_fraction_high"):
        assert sb[key] == pytest.approx(sa[key], rel=1e-4, abs=1e-7), key
    base = load_file(os.path.join(arithmetic_task, "base_model", "model.safetensors"))
    moved = [k for k in base if float((wa[k] - base[k]).norm()) > 0]
    assert moved, "the update changed no weight; the comparison would be empty"
    for k in moved:
        assert float((wa[k] - wb[k]).norm() / (wa[k] - base[k]).norm()) < 5e-3, k
