"""Rewards from code on 2 ranks (real deepspeed launcher, gloo): a failure on one rank's rows stops
every rank with the same line and exit status 2; logged means cover both ranks' rows."""
import json
import os
import signal
import subprocess

import pytest

from ..multirank.conftest import clean_env
from ..multirank.launcher import REPO, deepspeed_cmd

pytestmark = pytest.mark.multirank
SCRIPT = os.path.join(REPO, "tests", "rewards", "scripts", "two_rank_rewards.py")


def _launch(mode, out_dir, timeout=240):
    proc = subprocess.Popen(deepspeed_cmd(SCRIPT, [mode, str(out_dir)], 2), cwd=REPO, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s (a rank left waiting?):\n{(out + err)[-4000:]}")
    return proc.returncode, out + err


def test_means_over_both_ranks(tmp_path):
    code, log = _launch("ok", tmp_path)
    assert code == 0, log[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Hand-computed: acc applies to 1, 3, 5 (mean 3) on 3 of 4 rows; half is 0.5 everywhere.
    assert ranks[0]["total"] == [1 + 2 * 0.5, 2 * 0.5] and ranks[1]["total"] == [3 + 1.0, 5 + 1.0]
    for r in ranks:
        assert r["metrics"] == {"reward/acc": 3.0, "reward/acc/applies": 0.75, "reward/half": 0.5,
                                "reward/half/applies": 1.0}


def test_a_failure_on_one_rank_stops_every_rank_with_one_line(tmp_path):
    code, log = _launch("fail", tmp_path)
    assert code == 2, log[-4000:]
    line = ("two_rank_rewards.py: reward source 'acc' (rank 1, row 1): raised ValueError: could not convert string "
            "to float: 'x'; prompt 'q1b', completion 'c'")
    assert log.count(line) == 2, log[-4000:]     # printed by both ranks
    assert "Traceback" not in log
