"""Starting rlhf_ds processes through the real deepspeed launcher, for the benchmarks that run them
(test_hybrid_generation.py, test_e2e_rl.py, test_dpo_throughput.py; this folder is on sys.path, see
conftest.py)."""
import os
import shutil
import socket
import sys
from typing import List


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_cmd(script: str, args: List[str], ranks: int) -> List[str]:
    """`deepspeed --num_gpus RANKS --master_port <free> SCRIPT ARGS...`: a port of its own, so that
    benchmarks never meet another job on the launcher's default one."""
    launcher = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    return [launcher, "--num_gpus", str(ranks), "--master_port", str(free_port()), script, *args]
