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


RESTART = """
import torch
from rlhf_ds.engine import build_train_engine, init_distributed, shutdown_distributed

def engine():
    model = torch.nn.Linear(4, 2)
    return build_train_engine("m", lambda: model, {"zero_optimization": {"stage": 2}}, micro_batch_size=1,
                              grad_accum=1, precision="fp32", gradient_clipping=1.0, lr=0.1, weight_decay=0.0,
                              total_steps=1, warmup_steps=0, schedule="constant", source="test", seed=0)

for attempt in range(2):      # a second pipeline in the same process, after the first shut down
    init_distributed("cpu")
    e = engine()
    loss = e(torch.ones(1, 4)).sum()
    e.backward(loss)
    e.step()
    shutdown_distributed()
print("ok")
"""


def test_an_engine_after_shutdown_and_a_new_world():
    """DeepSpeed's cached world-group clone must not outlive the world it was cloned from."""
    proc = subprocess.run([sys.executable, "-c", RESTART], env=clean_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-3000:] + proc.stderr[-3000:]
