"""Benchmarks collected by `pytest benchmarks/`.

The kernel benchmarks (test_bench_*.py) share `kernel_harness.py`, the ones that start
rlhf_ds through the deepspeed launcher share `launching.py`; this folder is put on
sys.path so that they can import them (pytest runs with --import-mode=importlib,
which does not add test folders to sys.path). Figures are printed (run with -s to see
them as they come; they are also in the captured output of each test) and written
as JSON under benchmarks/results/.
"""
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
