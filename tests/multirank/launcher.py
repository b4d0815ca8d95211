"""Run a script on N ranks through the real `deepspeed` launcher (gloo on CPU)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from typing import List, Optional

from .conftest import clean_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_cmd(script: str, args: List[str], ranks: int) -> List[str]:
    launcher = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    return [launcher, "--num_gpus", str(ranks), "--master_port", str(free_port()), script, *args]


def run_deepspeed(script: str, args: List[str], ranks: int = 2, timeout: int = 600,
                  env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run to completion; on failure or timeout raise with the tail of the output.

    The launcher runs in its own session so that a timeout kills its ranks too: killing only the
    launcher would leave them running, holding cores and memory for every later test.
    """
    cmd = deepspeed_cmd(script, args, ranks)
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(**(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"deepspeed {script} {' '.join(args)} still running after {timeout} s; killed:\n"
                             f"{(out + err)[-6000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"deepspeed {script} {' '.join(args)} exited {proc.returncode}:\n"
                             f"{(out + err)[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
