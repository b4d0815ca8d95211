"""launch/evaluate.py on 2 ranks (ZeRO-3 over gloo) through the deepspeed launcher, as the README runs it."""
import json
import os

import pytest

from ..multirank.launcher import REPO, run_deepspeed
from .checks import check_against_transformers

pytestmark = pytest.mark.multirank
EVALUATE = os.path.join(REPO, "launch", "evaluate.py")


def test_two_ranks_with_only_the_model_directories(eval_run):
    """An odd number of prompts: one rank answers one prompt fewer and pads its forwards."""
    out = os.path.join(eval_run, "eval")     # the default output folder
    n, new_tokens = 5, 6
    proc = run_deepspeed(EVALUATE, [os.path.join(eval_run, "sft"), os.path.join(eval_run, "ppo"),
                                    "--num_prompts", str(n), "--max_new_tokens", str(new_tokens)], ranks=2,
                         timeout=600)
    assert "| ppo | " in proc.stdout
    results = json.load(open(os.path.join(out, "evaluation.json")))
    samples = [json.loads(line) for line in open(os.path.join(out, "samples.jsonl"))]
    assert results["world_size"] == 2 and results["num_prompts"] == n and len(samples) == 2 * n
    assert os.path.getsize(os.path.join(out, "reward_vs_kl.png")) > 0
    check_against_transformers(eval_run, results, samples, n, new_tokens)
    assert results["models"][0]["kl"] == 0.0
