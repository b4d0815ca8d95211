"""A user error on 2 ranks through the deepspeed launcher: each rank prints its one line, no traceback,
and the launch exits with status 2."""
import os
import signal
import subprocess

import pytest

from ..conftest import TINY, clean_env
from ..multirank.launcher import REPO, deepspeed_cmd

pytestmark = pytest.mark.multirank


def test_empty_prompt_file_on_every_rank(save_dir, tmp_path):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("")
    base = os.path.join(save_dir, "task", "base_model")
    cmd = deepspeed_cmd(os.path.join(REPO, "launch", "train_ppo.py"),
                        ["--deepspeed", "zero3", "--save_dir", save_dir, *TINY, f"--model.sft_model_path={base}",
                         f"--model.reward_model_path={base}", f"--ppo.prompt_path={empty}"], 2)
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    log = out + err
    assert proc.returncode == 2, log[-4000:]
    assert log.count(f"train_ppo.py: {empty}: no records found") == 2, log[-4000:]
    assert "Traceback" not in log
