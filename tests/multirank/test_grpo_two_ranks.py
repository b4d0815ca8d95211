"""GRPO on 2 ranks (ZeRO-3 over gloo) through launch/train_grpo.py: n samples per prompt, dynamic
sampling, a reward from code (no reward model is trained or loaded), and exact resume after SIGKILL."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from .conftest import TINY, clean_env, read_jsonl, strip_times
from .launcher import REPO, deepspeed_cmd, run_deepspeed

pytestmark = pytest.mark.multirank
GRPO = os.path.join(REPO, "launch", "train_grpo.py")

# A rule reward with many ties: groups of 4 whose samples all score the same are common, so dynamic
# sampling drops some and draws again.
REWARD = '''
def score(prompts, completions, **columns):
    return [float(len(c) % 3 == 0) for c in completions]
'''


def _args(out, demo_task, reward_file, extra):
    return ["--deepspeed", "configs/zero3.json", "--save_dir", out, *TINY,
            f"--model.sft_model_path={os.path.join(demo_task, 'base_model')}",
            f"--rewards.sources=[{{type: function, function: '{reward_file}:score'}}]",
            "--ppo.iterations=4", "--save_interval=2", "--ppo.rollout_batch_size=4", "--ppo.n_samples=4",
            "--ppo.minibatch_size=8", "--ppo.dynamic_sampling=true", "--ppo.max_extra_batches=2",
            "--ppo.eval_interval=0", "--data.demo_eval_prompts=4", *extra]


def _weights(path):
    from safetensors.torch import load_file
    return load_file(os.path.join(path, "model.safetensors"))


def test_grpo_resume_after_a_crash_continues_exactly(tmp_path, demo_task):
    """4 GRPO iterations straight through == 2 iterations, killed (SIGKILL), then resumed for 2 more."""
    import shutil
    reward_file = str(tmp_path / "rule_reward.py")
    with open(reward_file, "w") as f:
        f.write(REWARD)
    straight, crashed = str(tmp_path / "straight"), str(tmp_path / "crashed")
    for d in (straight, crashed):
        shutil.copytree(demo_task, os.path.join(d, "task"))
    log = run_deepspeed(GRPO, _args(straight, demo_task, reward_file, []), ranks=2, timeout=900)
    out = log.stdout + log.stderr
    assert "models: actor, reference;" in out                      # no critic, no reward model
    assert not os.path.exists(os.path.join(straight, "reward_model"))

    # Same run, killed without warning once the iteration-2 checkpoint is complete.
    proc = subprocess.Popen(deepspeed_cmd(GRPO, _args(crashed, demo_task, reward_file, []), 2), cwd=REPO,
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    latest = os.path.join(crashed, "checkpoints", "grpo", "latest")
    deadline = time.time() + 600
    while not os.path.exists(latest) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(latest), "the run never wrote its iteration-2 checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(crashed, "grpo", "model.safetensors")), "killed too late to test resume"

    log = run_deepspeed(GRPO, _args(crashed, demo_task, reward_file, ["--resume"]), ranks=2, timeout=900)
    assert "grpo: resumed at iteration 2" in log.stdout

    a, b = _weights(os.path.join(straight, "grpo")), _weights(os.path.join(crashed, "grpo"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    ma = strip_times(r for r in read_jsonl(os.path.join(straight, "logs", "metrics.jsonl")) if r["stage"] == "grpo")
    mb = strip_times(r for r in read_jsonl(os.path.join(crashed, "logs", "metrics.jsonl")) if r["stage"] == "grpo")
    train = [r for r in ma if "policy_loss" in r]
    assert len(train) == 4
    assert sum(r["dropped_groups"] for r in train) > 0, "dynamic sampling never dropped a group: nothing tested"
    assert [r["step"] for r in mb] == [r["step"] for r in ma]
    for ra, rb in zip(ma, mb):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), (ra["step"], k)
            else:
                assert rb[k] == ra[k], (ra["step"], k)
    summary = json.load(open(os.path.join(crashed, "logs", "summary.json")))
    assert summary["algorithm"] == "grpo" and summary["world_size"] == 2
