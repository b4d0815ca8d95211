"""The arithmetic task end to end on 2 ranks (ZeRO-3), from an empty output folder, as the README runs it
(smaller): the task is built, SFT trained, then GRPO (or PPO with the critic from the SFT policy) with the
rule rewards; no reward model is trained or loaded; held-out pass@1 / pass@n / format rate before, during
and after RL; the summary keys and the curves."""
import json
import os

import pytest

from .conftest import read_jsonl
from .launcher import REPO, run_deepspeed

pytestmark = [pytest.mark.multirank, pytest.mark.slow]

SMALL = ["--data.demo_sft_records=256", "--data.demo_prompt_records=64", "--data.demo_eval_prompts=15",
         "--sft.max_steps=8", "--sft.batch_size=16", "--ppo.iterations=3", "--ppo.eval_interval=2",
         "--ppo.rollout_batch_size=8", "--logging.progress=false", "--logging.tensorboard=false"]


@pytest.mark.parametrize("script, stage, models, extra", [
    ("train_grpo.py", "grpo", "models: actor, reference;", ["--ppo.minibatch_size=32"]),
    ("train_ppo.py", "ppo", "models: actor, critic, reference;", ["--ppo.minibatch_size=8"]),
])
def test_the_arithmetic_task_end_to_end(tmp_path, script, stage, models, extra):
    out = str(tmp_path / "run")
    log = run_deepspeed(os.path.join(REPO, "launch", script),
                        ["--deepspeed", "configs/zero3.json", "--task", "arithmetic", "--save_dir", out, *SMALL, *extra],
                        ranks=2, timeout=900)
    text = log.stdout + log.stderr
    assert models in text and "no reward source is the reward model; none is trained" in text
    assert not os.path.exists(os.path.join(out, "reward_model"))
    assert json.load(open(os.path.join(out, "task", "task.json")))["task"] == "arithmetic"
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["task"] == "arithmetic" and config["model"]["critic_init"] == "sft"

    rows = [r for r in read_jsonl(os.path.join(out, "logs", "metrics.jsonl")) if r["stage"] == stage]
    evals = [r for r in rows if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2]                    # before RL and at the evaluation interval
    final = next(r for r in rows if "final_eval_accuracy" in r)
    for r in evals + [{k[len("final_"):]: v for k, v in final.items() if k.startswith("final_")}]:
        # 15 held-out questions over 2 ranks: the padding row is not counted; 8 samples each.
        assert r["eval_prompts"] == 15 and r["eval_samples_per_prompt"] == 8
        assert 0.0 <= r["eval_accuracy"] <= r["eval_pass_at_n"] <= 1.0
        # pass@1 is the mean of exact_match over all samples, and the format rate format_reward's mean: two
        # figures computed by different code from the same completions.
        assert r["eval_accuracy"] == pytest.approx(r["eval_reward/exact_match"], abs=1e-9)
        assert r["eval_format_rate"] == pytest.approx(r["eval_reward/format_reward"], abs=1e-9)
    train = [r for r in rows if "policy_loss" in r]
    assert len(train) == 3 and all("reward/exact_match" in r and "reward/format_reward" in r for r in train)

    summary = json.load(open(os.path.join(out, "logs", "summary.json")))
    assert summary["algorithm"] == stage and summary["world_size"] == 2
    assert summary["accuracy_sft"] == evals[0]["eval_accuracy"]
    assert summary["pass_at_n_sft"] == evals[0]["eval_pass_at_n"]
    assert summary["accuracy_final"] == final["final_eval_accuracy"]
    assert summary["pass_at_n_final"] == final["final_eval_pass_at_n"]
    if summary["pass_at_n_sft"] > summary["accuracy_sft"]:
        assert summary["accuracy_gap_closed"] == pytest.approx(
            (summary["accuracy_final"] - summary["accuracy_sft"]) / (summary["pass_at_n_sft"] - summary["accuracy_sft"]))
    assert summary["gold_reward_sft"] is None and "gold_gap_closed" not in summary
    assert {f"{stage}.png", f"{stage}_eval.png", "sft.png"} <= set(os.listdir(os.path.join(out, "plots")))
