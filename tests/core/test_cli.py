"""The launch scripts as a user runs them: bad input is one line on stderr and exit status 2."""
import os
import subprocess
import sys

from ..conftest import clean_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, timeout=180):
    env = clean_env()
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def test_bad_value_is_one_clear_line(tmp_path):
    proc = _run("launch/train_ppo.py", "--deepspeed", "configs/zero3.json", f"--save_dir={tmp_path}",
                "--ppo.kl_estimator=k9")
    assert proc.returncode == 2
    assert "train_ppo.py: command line: ppo.kl_estimator: 'k9' is not allowed; allowed: k1, k2, k3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_key():
    proc = _run("launch/train_sft.py", "--help")
    assert proc.returncode == 0
    assert "--sft.learning_rate" in proc.stdout and "--ppo.kl_estimator" in proc.stdout and "one of: k1, k2, k3" in proc.stdout


def test_missing_reward_model_is_reported(tmp_path):
    proc = _run("launch/train_ppo.py", "--deepspeed", "configs/zero3.json", f"--save_dir={tmp_path}",
                "--model.name_or_path=/nonexistent/base", f"--model.sft_model_path={tmp_path}",
                f"--model.reward_model_path={tmp_path}/rm", "--ppo.prompt_path=/nonexistent.jsonl")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{tmp_path}: no tokenizer here" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_grpo_batch_sizes_that_do_not_divide_name_the_key(tmp_path):
    # The GRPO demo samples 32 prompts x 8 = 256 completions per iteration.
    proc = _run("launch/train_grpo.py", "--deepspeed", "configs/zero3.json", f"--save_dir={tmp_path}",
                "--ppo.minibatch_size=100")
    assert proc.returncode == 2
    assert ("train_grpo.py: ppo.minibatch_size (100 completions) must divide the 256 completions of a rollout "
            "(ppo.rollout_batch_size 32 prompts x ppo.n_samples 8); change ppo.minibatch_size") in proc.stderr
    assert "Traceback" not in proc.stderr
