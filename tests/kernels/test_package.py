"""The package itself: its import name, the dispatch API and the backend-forcing switch."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rlhf_kernels
from rlhf_kernels import _backend

REPO_ROOT = Path(__file__).resolve().parents[2]


def _python(code, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("RLHF_KERNELS_BACKEND", "TRITON_INTERPRET")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_repository_root_offers_no_kernels_package():
    """From the repository root (root first on sys.path, as for any `python` started there),
    nothing answers `import kernels`: transformers must not think Hugging Face's `kernels` is
    installed, and bitsandbytes' `from kernels import get_kernel` must not find a stranger
    (it used to find our folder and log "cannot import name 'get_kernel'")."""
    code = f"""
import sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from transformers.utils.import_utils import is_kernels_available
print("available", is_kernels_available())
try:
    import kernels
    print("found", kernels.__file__)
except ModuleNotFoundError:
    print("found none")
import rlhf_kernels
print("rlhf", rlhf_kernels.__name__, callable(rlhf_kernels.gather_logprobs))
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines["available"] == "False"
    assert lines["found"] == "none"
    assert lines["rlhf"] == "rlhf_kernels True"
    assert not (REPO_ROOT / "kernels").exists()


def test_a_real_hf_kernels_further_along_the_path_is_loaded_instead(tmp_path):
    """Shadowing must not break Hugging Face's package where it is installed: from the
    repository root, `import kernels` then yields the real one (here a stand-in)."""
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '0.18.5'\nMARKER = 'hf-kernels'\n"
                                      "def get_kernel(name):\n    return name\n")
    code = f"""
import sys
sys.path[:0] = [{str(REPO_ROOT)!r}, {str(fake.parent)!r}]
import kernels
print(kernels.MARKER, kernels.__version__, kernels.get_kernel("x"))
import rlhf_kernels
print(rlhf_kernels.__name__)
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["hf-kernels", "0.18.5", "x", "rlhf_kernels"]


def test_public_api():
    for name in ("gather_logprobs", "fused_linear_logprobs", "per_token_kl", "kl_shaped_rewards", "gae",
                 "set_default_backend", "get_default_backend", "use_backend"):
        assert callable(getattr(rlhf_kernels, name)), name
    assert rlhf_kernels.BACKENDS == ("auto", "triton", "torch", "reference")
    assert not hasattr(rlhf_kernels, "__version__")  # nothing for a `kernels` probe to read, either way


def test_bad_backend_names_the_allowed_values():
    with pytest.raises(ValueError, match="allowed: auto, triton, torch, reference"):
        rlhf_kernels.set_default_backend("cuda")
    with pytest.raises(ValueError, match="allowed: auto, triton, torch, reference"):
        with rlhf_kernels.use_backend("fast"):
            pass
    assert rlhf_kernels.get_default_backend() == "auto"


def test_use_backend_scopes_and_restores():
    assert rlhf_kernels.get_default_backend() == "auto"
    with rlhf_kernels.use_backend("reference"):
        assert rlhf_kernels.get_default_backend() == "reference"
        with rlhf_kernels.use_backend("torch"):
            assert rlhf_kernels.get_default_backend() == "torch"
        assert rlhf_kernels.get_default_backend() == "reference"
    with pytest.raises(RuntimeError):
        with rlhf_kernels.use_backend("reference"):
            raise RuntimeError("boom")
    assert rlhf_kernels.get_default_backend() == "auto"


def test_set_default_backend_is_global(monkeypatch):
    monkeypatch.setattr(_backend, "_process_default", "auto")  # restored after the test
    rlhf_kernels.set_default_backend("reference")
    assert rlhf_kernels.get_default_backend() == "reference"
    assert _backend.resolve("auto", torch.device("cpu")) == "reference"
    assert _backend.resolve("torch", torch.device("cpu")) == "torch"  # an explicit choice wins


def test_auto_resolution_and_triton_requirements(monkeypatch):
    cpu = torch.device("cpu")
    assert _backend.resolve("auto", cpu) == "torch"
    assert _backend.resolve("reference", cpu) == "reference"
    monkeypatch.setattr(_backend, "interpreter_active", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _backend.resolve("triton", cpu)
    if _backend.HAS_TRITON:
        assert _backend.resolve("auto", torch.device("cuda", 0)) == "triton"
    monkeypatch.setattr(_backend, "HAS_TRITON", False)
    assert _backend.resolve("auto", torch.device("cuda", 0)) == "torch"
    with pytest.raises(RuntimeError, match="triton package"):
        _backend.resolve("triton", cpu)


def _spy(monkeypatch, module_name, attr):
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    calls = []

    def spy(*args, **kwargs):
        calls.append(attr)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, attr, spy)
    return calls


def test_forcing_reference_reaches_every_op(monkeypatch):
    """`use_kernels: reference` in a trainer is one call; every op then runs its twin."""
    calls = []
    for module, attr in [("rlhf_kernels.gather_logprobs", "gather_logprobs_reference"),
                         ("rlhf_kernels.fused_linear_logprobs", "_gather_logprobs_reference"),
                         ("rlhf_kernels.kl", "per_token_kl_reference"),
                         ("rlhf_kernels.kl", "kl_shaped_rewards_reference"),
                         ("rlhf_kernels.gae", "gae_reference")]:
        calls.append(_spy(monkeypatch, module, attr))
    logits, labels = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    hidden, weight = torch.randn(2, 3, 4), torch.randn(5, 4)
    lp, mask, scores = torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.randn(2)

    def run_all():
        rlhf_kernels.gather_logprobs(logits, labels)
        rlhf_kernels.fused_linear_logprobs(hidden, weight, labels)
        rlhf_kernels.per_token_kl(lp, lp, mask, "k3")  # (the k1/k2 torch path reuses the twin)
        rlhf_kernels.kl_shaped_rewards(scores, lp, lp, mask, 0.1, "k3")
        rlhf_kernels.gae(lp, lp, mask, 0.9, 0.9)

    run_all()
    assert all(len(c) == 0 for c in calls)  # auto on CPU: the torch paths
    with rlhf_kernels.use_backend("reference"):
        run_all()
    assert [len(c) for c in calls] == [1, 1, 1, 1, 1]


def test_environment_variable_sets_the_process_default():
    out = _python("import rlhf_kernels; print(rlhf_kernels.get_default_backend())",
                  {"RLHF_KERNELS_BACKEND": "reference"})
    assert out.returncode == 0 and out.stdout.strip() == "reference", out.stderr[-2000:]
