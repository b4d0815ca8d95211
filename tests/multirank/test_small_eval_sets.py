"""An evaluation set with fewer records than ranks: the rank without any still joins every
collective forward (padding forwards, not counted), and the figures count each record once."""
import os

import pytest

from .conftest import TINY, read_jsonl
from .launcher import REPO, run_deepspeed

pytestmark = pytest.mark.multirank


def _first_record(src, dst):
    with open(src) as f:
        first = next(line for line in f if line.strip())
    with open(dst, "w") as f:
        f.write(first)
    return dst


def test_one_record_eval_sets_on_two_ranks(save_dir):
    data = os.path.join(save_dir, "task", "data")
    sft_eval = _first_record(os.path.join(data, "sft.jsonl"), os.path.join(save_dir, "sft_eval.jsonl"))
    rm_eval = _first_record(os.path.join(data, "preference_eval.jsonl"), os.path.join(save_dir, "rm_eval.jsonl"))
    common = ["--deepspeed", "configs/zero3.json", "--save_dir", save_dir, *TINY,
              "--sft.max_steps=1", "--reward.max_steps=1", f"--sft.eval_path={sft_eval}",
              f"--reward.eval_path={rm_eval}"]
    run_deepspeed(os.path.join(REPO, "launch", "train_sft.py"), common, ranks=2, timeout=300)
    run_deepspeed(os.path.join(REPO, "launch", "train_rm.py"),
                  [*common, f"--model.sft_model_path={os.path.join(save_dir, 'sft')}"], ranks=2, timeout=300)
    rows = read_jsonl(os.path.join(save_dir, "logs", "metrics.jsonl"))
    sft = [r for r in rows if r["stage"] == "sft" and "eval_loss" in r]
    rm = [r for r in rows if r["stage"] == "reward" and "eval_accuracy" in r]
    assert sft and sft[-1]["eval_tokens"] > 0
    assert rm and rm[-1]["eval_pairs"] == 1 and rm[-1]["eval_accuracy"] in (0.0, 1.0)
