"""The SLURM path: ranks started without a launcher, from SLURM_PROCID / SLURM_NTASKS alone."""
import json
import os
import subprocess
import sys

import pytest

from .conftest import clean_env
from .launcher import REPO, free_port

pytestmark = pytest.mark.multirank
SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "slurm_env_allreduce.py")


def test_ranks_from_slurm_variables(tmp_path):
    out = str(tmp_path / "r.json")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, SCRIPT, out], cwd=REPO, env=clean_env(
        SLURM_PROCID=str(r), SLURM_LOCALID=str(r), SLURM_NTASKS="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
        for r in range(2)]
    try:
        assert [p.wait(timeout=180) for p in procs] == [0, 0]
    finally:
        for p in procs:      # a hung rank must not outlive the test
            if p.poll() is None:
                p.kill()
    results = [json.load(open(f"{out}.rank{r}")) for r in range(2)]
    assert [(r["rank"], r["world"], r["local_rank"]) for r in results] == [(0, 2, 0), (1, 2, 1)]
    assert all(r["sum"] == 3.0 and r["backend"] == "gloo" for r in results)
