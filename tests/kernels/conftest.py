"""Kernel tests: how the Triton kernels run on CPU, and shared tolerance checks.

Interpreter policy. Triton decides once, when `triton` is first imported (and at each
`@triton.jit`), whether it interprets kernels on the CPU; TRITON_INTERPRET set later
changes nothing. So, when this conftest is imported:

* if no CUDA device is present and `triton` has not been imported yet, it sets
  TRITON_INTERPRET=1, imports triton and rlhf_kernels (whose kernels are then
  interpreter functions), and restores the environment at once. Tests marked
  `triton_interp` set TRITON_INTERPRET=1 again for their own duration (Triton reads the
  knob lazily too, e.g. when it imports its submodules mid-run). Other tests, other
  folders and their subprocesses see the environment unchanged; the only lasting
  effect is that Triton in this process interprets, which on a machine without CUDA
  is the only way it can run at all.
* otherwise (a CUDA machine, or triton already imported in compiled mode by an
  earlier test module) tests marked `triton_interp` skip here, and
  test_interpreter_subprocess.py runs exactly those tests in a fresh pytest process
  with TRITON_INTERPRET=1 and CUDA hidden, so they are never silently lost. On a CUDA
  machine the compiled kernels are covered by the `gpu` tests.
"""
import os
import sys

import pytest
import torch

if "triton" not in sys.modules and not torch.cuda.is_available():
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        try:
            import triton  # noqa: F401
        except ImportError:  # no triton here: the torch paths are still tested
            pass
        import rlhf_kernels  # noqa: F401  (decorates the kernels while interpreting)
    finally:
        if _previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _previous

import rlhf_kernels  # noqa: E402

INTERPRETER = rlhf_kernels.interpreter_active()


def pytest_configure(config):
    config.addinivalue_line("markers", "triton_interp: runs the Triton kernels on CPU tensors through the "
                                       "Triton interpreter (TRITON_INTERPRET=1)")


@pytest.fixture(autouse=True)
def _triton_interpreter_gate(request, monkeypatch):
    if request.node.get_closest_marker("triton_interp") is None:
        return
    if not INTERPRETER:
        pytest.skip("Triton interpreter not active in this process; "
                    "test_interpreter_subprocess.py runs these tests in a fresh one")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def small_chunks(monkeypatch):
    """Force many small pieces on small test shapes: row chunks of the torch paths, and
    vocabulary blocks of 16 in the Triton kernels (so the online softmax rescales)."""
    import importlib
    module = importlib.import_module("rlhf_kernels.gather_logprobs")
    monkeypatch.setattr(module, "TORCH_CHUNK_BYTES", 3 * 4 * 64)  # 3 rows of 64 fp32 logits
    monkeypatch.setattr(module, "TRITON_MAX_BLOCK_V", 16)
    return module


def assert_no_worse_than_eager(ours, eager, truth, rtol, atol=0.0, what=""):
    """Low-precision judgement: |ours - fp64| <= |eager - fp64| + atol + rtol |fp64|, elementwise."""
    truth = truth.double()
    err_ours = (ours.double() - truth).abs()
    err_eager = (eager.double() - truth).abs()
    bound = err_eager + atol + rtol * truth.abs()
    bad = err_ours > bound
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements worse than eager + tol; first at {i}: "
            f"ours {ours[tuple(i)].item():.8g}, eager {eager[tuple(i)].item():.8g}, "
            f"fp64 {truth[tuple(i)].item():.8g}; max excess {(err_ours - bound).max().item():.3g}")


@pytest.fixture
def no_worse_than_eager():
    return assert_no_worse_than_eager


# Unit roundoff u of each dtype (the largest relative error of one round-to-nearest;
# one ulp is between u and 2u relative). Low-precision gradients, stored in the input
# dtype, may be u |fp64| worse than eager's own error: one more rounding's worth.
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.fixture
def unit_roundoff():
    return UNIT_ROUNDOFF
