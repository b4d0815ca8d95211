"""Process-group start-up on CPU compiles nothing.

DeepSpeed's CPU backend would JIT-build its shared-memory all-reduce op at init (minutes of
C++ on a fresh 2-core machine, with a lock file that a killed build leaves behind). A fresh
extensions folder shows whether anything was built.
"""
import os
import subprocess
import sys

from ..conftest import clean_env

SCRIPT = """
import deepspeed.comm.comm as ds_comm
from rlhf_ds.engine import init_distributed, shutdown_distributed
info = init_distributed("cpu")
assert info.backend == "gloo" and info.world_size == 1, info
assert ds_comm.cdb.shm_comm_op is None, "the shared-memory all-reduce op was built"
shutdown_distributed()
print("ok")
"""


def test_cpu_init_builds_no_extension(tmp_path):
    ext = tmp_path / "torch_extensions"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=clean_env(TORCH_EXTENSIONS_DIR=str(ext)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not ext.exists() or not os.listdir(ext), os.listdir(ext)
