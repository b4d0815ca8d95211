"""The critic-free algorithms through the real RL loop (ZeRO-3 engines, one rank, in this process): what
each builds, what it logs and what its summary holds."""
import json
import os
import shutil

import pytest
from transformers import AutoModelForCausalLM

from rlhf_ds.pipeline import create_rlhf_pipeline

from ..conftest import TINY

SUMMARY_KEYS = ("algorithm", "gold_reward_sft", "gold_reward_final", "gold_gap_closed", "kl_final", "tokens_per_s",
                "wall_time_s")


def _run(tmp_path, demo_task, name, extra, recipe=None):
    out = str(tmp_path / name)
    shutil.copytree(demo_task, os.path.join(out, "task"))
    base = os.path.join(demo_task, "base_model")
    pipe = create_rlhf_pipeline(None, [*TINY, f"--save_dir={out}", "--data.demo_eval_prompts=4", "--ppo.iterations=2",
                                       "--ppo.rollout_batch_size=4", f"--model.sft_model_path={base}",
                                       f"--model.reward_model_path={base}", "--save_interval=1", *extra],
                                recipe=recipe)
    pipe.run_rl_training()
    summary = pipe.finish()
    rows = [json.loads(line) for line in open(os.path.join(out, "logs", "metrics.jsonl"))]
    return out, summary, rows


def test_grpo_with_dynamic_sampling_and_the_dapo_options(tmp_path, demo_task, capsys):
    out, summary, rows = _run(tmp_path, demo_task, "grpo", [
        "--ppo.n_samples=4", "--ppo.minibatch_size=8", "--ppo.dynamic_sampling=true", "--ppo.max_extra_batches=1",
        "--ppo.overlong_buffer=4", "--ppo.clip_range_high=0.28", "--ppo.mask_truncated=true"], recipe="grpo")
    log = capsys.readouterr().out
    assert "models: actor, reference, reward model;" in log           # no critic
    assert summary["algorithm"] == "grpo"
    for key in SUMMARY_KEYS:
        assert isinstance(summary[key], (int, float, str)), key
    assert "gold_reward_ppo" not in summary
    train = [r for r in rows if r["stage"] == "grpo" and "policy_loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("zero_spread_share", "dropped_groups", "extra_batches", "clip_fraction_low", "clip_fraction_high",
                "entropy", "response_length", "truncation_rate", "kl", "kl_loss", "reward/model"):
        assert key in train[0], key
    assert "value_loss" not in train[0] and "lr_critic" not in train[0]
    # The checkpoint holds the actor alone, and the export loads with plain transformers.
    assert sorted(os.listdir(os.path.join(out, "checkpoints", "grpo", "iter1"))) == ["actor", "rng_rank0.pt",
                                                                                      "trainer_state.json"]
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "grpo"))


@pytest.mark.parametrize("estimator, kl_mode", [("dr_grpo", "off"), ("rloo", "reward"), ("reinforce_pp", "reward"),
                                                ("reinforce_pp_baseline", "loss")])
def test_each_estimator_runs_and_builds_only_what_it_needs(tmp_path, demo_task, capsys, estimator, kl_mode):
    _, summary, rows = _run(tmp_path, demo_task, estimator, [
        f"--ppo.advantage_estimator={estimator}", "--ppo.n_samples=2", "--ppo.minibatch_size=8",
        f"--ppo.kl_mode={kl_mode}", "--ppo.loss_aggregation=seq_mean_token_sum_norm"])
    log = capsys.readouterr().out
    want = "actor" + (", reference" if kl_mode != "off" else "") + ", reward model;"
    assert f"models: {want}" in log
    train = [r for r in rows if r["stage"] == estimator and "policy_loss" in r]
    assert len(train) == 2 and all(abs(r["policy_loss"]) < 1e3 for r in train)
    assert ("kl" in train[0]) == (kl_mode != "off")
    assert summary["algorithm"] == estimator and summary["gold_reward_final"] is not None
    assert (summary["kl_final"] is None) == (kl_mode == "off")


def test_a_finished_rl_stage_is_left_alone_on_resume(tmp_path, demo_task, capsys):
    out, summary, _ = _run(tmp_path, demo_task, "finished", ["--ppo.iterations=1", "--ppo.n_samples=2",
                                                              "--ppo.minibatch_size=8"], recipe="grpo")
    weights = os.path.join(out, "grpo", "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    capsys.readouterr()
    base = os.path.join(demo_task, "base_model")
    again = create_rlhf_pipeline(None, [*TINY, f"--save_dir={out}", "--data.demo_eval_prompts=4", "--ppo.iterations=1",
                                        "--ppo.rollout_batch_size=4", f"--model.sft_model_path={base}",
                                        f"--model.reward_model_path={base}", "--save_interval=1", "--ppo.n_samples=2",
                                        "--ppo.minibatch_size=8", "--resume=true"], recipe="grpo")
    result = again.run_rl_training()
    assert "grpo: finished earlier at iteration 1" in capsys.readouterr().out
    assert os.stat(weights).st_mtime_ns == stamp
    assert result["gold_reward_final"] == summary["gold_reward_final"]
