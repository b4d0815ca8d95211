"""No hangs (one node): a rank that dies, or one that stops answering, ends the whole job within a
bounded time, every rank's process gone, with lines naming the rank that failed.

A killed rank closes its sockets: its peers' collectives fail at once, and the deepspeed launcher,
seeing a rank exit non-zero, stops the others (SIGTERM, SIGKILL 30 s later). A frozen rank (SIGSTOP:
what a peer sees when a node's link goes down, no connection closed) is noticed only through the
collective timeout, RLHF_DS_COLLECTIVE_TIMEOUT_S; the rank that times out reads the heartbeats and
names the silent one.
"""
import os
import signal
import subprocess
import time

import pytest

from ..multirank.launcher import deepspeed_cmd
from .conftest import clean_env
from .jobs import REPO, SFT, alive, long_sft_args, ranks_of, wait_for_steps

# slow: each test runs a job for about a minute (tests/multinode is also skipped by default as a whole).
pytestmark = [pytest.mark.multirank, pytest.mark.slow]
TIMEOUT_S = 20
LAUNCHER_GRACE_S = 30   # the deepspeed launcher's wait between SIGTERM and SIGKILL


def _start(tmp_path, demo_task):
    import shutil
    save_dir = str(tmp_path / "run")
    shutil.copytree(demo_task, os.path.join(save_dir, "task"))
    proc = subprocess.Popen(deepspeed_cmd(SFT, long_sft_args(save_dir), 2), cwd=REPO,
                            env=clean_env(RLHF_DS_COLLECTIVE_TIMEOUT_S=str(TIMEOUT_S)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_steps(save_dir, proc)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, ranks_of(proc)


def _end(proc, ranks, bound_s):
    t0 = time.time()
    try:
        out, _ = proc.communicate(timeout=bound_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the job still ran {bound_s} s after the failure:\n{out[-4000:]}") from None
    elapsed = time.time() - t0
    time.sleep(1)
    left = alive(ranks.values())
    assert not left, f"processes left behind: {[p.pid for p in left]}"
    assert proc.returncode != 0, out[-3000:]
    return out, elapsed


def test_a_killed_rank_ends_the_job(tmp_path, demo_task):
    proc, ranks = _start(tmp_path, demo_task)
    assert sorted(ranks) == [0, 1]
    ranks[1].send_signal(signal.SIGKILL)
    out, elapsed = _end(proc, ranks, bound_s=TIMEOUT_S + LAUNCHER_GRACE_S + 30)
    assert "failed rank(s): rank 1 (" in out, out[-3000:]


def test_a_frozen_rank_is_named_and_the_job_ends_after_the_timeout(tmp_path, demo_task):
    proc, ranks = _start(tmp_path, demo_task)
    ranks[1].send_signal(signal.SIGSTOP)
    out, elapsed = _end(proc, ranks, bound_s=TIMEOUT_S + LAUNCHER_GRACE_S + 30)
    assert "rlhf_ds: rank 0 of 2" in out and "failed rank(s): rank 1 (" in out, out[-3000:]
    assert elapsed >= TIMEOUT_S * 0.8, f"ended after {elapsed:.0f} s, before the collective timeout"
