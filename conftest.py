"""Marker policy shared by tests/ and benchmarks/.

Default run: everything except `slow`, `multinode` and `gpu`. `multirank` tests (two ranks through
the deepspeed launcher) run by default because they cover the distributed paths.
"""
import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_report_header(config):
    return ("rlhf_ds markers: `slow` skipped unless --run-slow (or RLHF_DS_RUN_SLOW=1); "
            "`multinode` (emulated nodes, a real SLURM) skipped unless --run-slow; "
            "`gpu` skipped unless CUDA is present; `multirank` runs by default "
            "(deselect with -m 'not multirank')")


def _cuda_available():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("RLHF_DS_RUN_SLOW") == "1"
    has_cuda = _cuda_available()
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    skip_multinode = pytest.mark.skip(reason="multinode: run with -m multinode --run-slow (needs root)")
    skip_gpu = pytest.mark.skip(reason="gpu: needs a CUDA device")
    for item in items:
        # get_closest_marker, not `in item.keywords`: keywords also hold folder names (tests/multinode/).
        if item.get_closest_marker("multinode") is not None and not run_slow:
            item.add_marker(skip_multinode)
        elif "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
