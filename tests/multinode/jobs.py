"""A training job of 2 ranks that runs until it is made to fail, and what the tests check about its end."""
from __future__ import annotations

import os
import subprocess
import time
from typing import List

import psutil

from .conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT = os.path.join(REPO, "launch", "train_sft.py")


def long_sft_args(save_dir: str) -> List[str]:
    """SFT that would run for hours: it is still training whenever the test strikes."""
    return ["--deepspeed", "configs/zero3.json", "--save_dir", save_dir, *TINY, "--sft.max_steps=100000",
            "--sft.eval_interval=100000", "--logging.log_interval=1"]


def wait_for_steps(save_dir: str, proc: subprocess.Popen, steps: int = 2, timeout: float = 300) -> None:
    """Until the job has logged `steps` training steps (its ranks are then inside the training loop)."""
    path = os.path.join(save_dir, "logs", "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the job ended before it trained (exit {proc.returncode})"
        if os.path.exists(path):
            with open(path) as f:
                if sum(1 for line in f if '"stage": "sft"' in line) >= steps:
                    return
        time.sleep(0.5)
    raise AssertionError(f"no {steps} training steps within {timeout} s")


def ranks_of(proc: subprocess.Popen) -> dict:
    """{local rank: psutil.Process} of the ranks a deepspeed launcher started."""
    out = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        for arg in cmd:
            if arg.startswith("--local_rank="):
                out[int(arg.split("=", 1)[1])] = child
    return out


def alive(procs) -> list:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left

