"""Runs the `triton_interp` tests in a fresh process when this one cannot interpret Triton.

See conftest.py: Triton's interpreter mode is fixed when triton is first imported. If
that happened before tests/kernels/conftest.py ran (another test module imported it),
or if this machine has CUDA (we do not switch a GPU process to the interpreter), the
interpreted tests skip in this process and this test runs them in a child pytest with
TRITON_INTERPRET=1 and CUDA hidden.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rlhf_kernels

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def test_interpreted_kernels_run_somewhere():
    if rlhf_kernels.interpreter_active():
        pytest.skip("the Triton interpreter is active in this process: the triton_interp tests ran here")
    if not rlhf_kernels._backend.HAS_TRITON:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    env.pop("RLHF_KERNELS_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", str(HERE), "-m", "triton_interp", "-q", "-p", "no:cacheprovider"]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = (out.stdout + out.stderr)[-4000:]
    assert out.returncode == 0, tail
    assert " passed" in out.stdout and " skipped" not in out.stdout.splitlines()[-1], tail
