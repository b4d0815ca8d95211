"""`--task` on the command line of the launch scripts: a bad name is one line on stderr naming the allowed
tasks, exit status 2, before anything starts."""
import os
import subprocess
import sys

import pytest

from ..conftest import clean_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("script", ["train_grpo.py", "train_ppo.py"])
def test_an_unknown_task_is_one_line_naming_the_allowed_ones(tmp_path, script):
    proc = subprocess.run([sys.executable, f"launch/{script}", "--deepspeed", "configs/zero3.json", "--save_dir",
                           str(tmp_path), "--task", "sums"], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env=clean_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith(f"{script}:")]
    assert ours == [f"{script}: command line: task: 'sums' is not allowed; allowed: describe, arithmetic"]
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []                              # nothing was built


def test_a_task_with_a_model_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "launch/train_grpo.py", "--task=arithmetic",
                           f"--model.name_or_path={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                          timeout=180, env=clean_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train_grpo.py: task: arithmetic is an embedded task" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_names_the_task_key():
    proc = subprocess.run([sys.executable, "launch/train_grpo.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env=clean_env())
    assert proc.returncode == 0
    assert "--task TASK" in proc.stdout and "--task  (default 'describe')" in proc.stdout
