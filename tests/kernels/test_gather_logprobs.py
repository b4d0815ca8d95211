"""gather_logprobs: Triton (interpreted on CPU) and the chunked torch path against the plain twin.

Tolerances: fp32 inputs, |ours - twin| <= 1e-5 + 1e-5 |twin| for log-probs and entropy,
2e-6 + 1e-5 |twin| for gradients. bf16 / fp16 inputs: ours against fp64 truth is no worse
than eager + 1e-6 (log-probs and entropy, in fp32; eager = log_softmax computed in the
input dtype) or than eager + u |fp64| (gradients, stored in the input dtype; eager = the
twin's autograd; u = unit roundoff, 2**-8 for bf16, 2**-11 for fp16). Under the Triton
interpreter a bf16 store truncates (numpy has no bf16; the GPU rounds to nearest), so
interpreted bf16 gradients are allowed 2u.
"""
import math
import zlib

import pytest
import torch

from rlhf_kernels import gather_logprobs, gather_logprobs_reference
from rlhf_kernels.gather_logprobs import entropy_reference

BACKENDS = [pytest.param("torch", id="torch"),
            pytest.param("triton", id="triton", marks=pytest.mark.triton_interp)]

# (leading shape, V, how the logits are laid out)
CASES = [
    ((2, 5), 37, "shifted"),   # logits[:, :-1] of a (B, T+1, V) tensor, read in place
    ((7,), 64, "flat"),        # (N, V)
    ((3, 1), 33, "contig"),    # T = 1
    ((2, 3), 1, "contig"),     # V = 1: every log-prob is 0
    ((2, 4), 130, "transposed"),  # stride along V != 1
]


def _make_logits(lead, V, layout, dtype, gen, scale=3.0):
    if layout == "shifted":
        base = torch.randn(lead[0], lead[1] + 1, V, generator=gen, dtype=torch.float64) * scale
        return base.to(dtype)[:, :-1]
    if layout == "transposed":
        base = torch.randn(*lead[:-1], V, lead[-1], generator=gen, dtype=torch.float64) * scale
        return base.to(dtype).transpose(-1, -2)
    return (torch.randn(*lead, V, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _make_labels(lead, V, gen):
    labels = torch.randint(0, V, lead, generator=gen)
    flat = labels.view(-1)
    flat[1::4] = -100                 # holes
    if len(lead) == 2 and lead[0] > 1:
        labels[-1] = -100             # a fully ignored row
    return labels


def _run(fn, logits, labels, temperature, entropy, g_lp, g_ent):
    """Call fn on the same view of a fresh leaf (keeping the caller's strides); return
    log-probs, entropy and the gradient seen through that view."""
    base = logits._base if logits._base is not None else logits
    leaf = base.detach().clone().requires_grad_(True)
    view = leaf.as_strided(logits.shape, logits.stride(), logits.storage_offset())
    out = fn(view, labels, temperature)
    lp, ent = out if entropy else (out, None)
    loss = (lp * g_lp).sum() + ((ent * g_ent).sum() if entropy else 0.0)
    loss.backward()
    grad = leaf.grad.as_strided(logits.shape, logits.stride(), logits.storage_offset())
    return lp.detach(), (ent.detach() if entropy else None), grad


def _twin(entropy):
    def fn(x, labels, temperature):
        lp = gather_logprobs_reference(x, labels, temperature)
        return (lp, entropy_reference(x, labels, temperature)) if entropy else lp
    return fn


def _fp64_truth(x, labels, temperature):
    """Log-probs and entropy computed in float64 throughout (the twin computes in fp32)."""
    logp = torch.log_softmax(x.double() / temperature, dim=-1)
    ignored = labels == -100
    lp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(ignored, 0.0)
    p = logp.exp()
    ent = -torch.where(p > 0, p * logp, 0.0).sum(-1).masked_fill(ignored, 0.0)
    return lp, ent


def _ours(backend, entropy):
    return lambda x, labels, t: gather_logprobs(x, labels, t, return_entropy=entropy, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead,V,layout", CASES)
@pytest.mark.parametrize("temperature,entropy", [(1.0, False), (0.7, True)])
def test_fp32_matches_twin(backend, lead, V, layout, temperature, entropy, small_chunks):
    # crc32, not hash(): str hashes change with every process (PYTHONHASHSEED), and so did the data.
    gen = torch.Generator().manual_seed(zlib.crc32(repr((lead, V, layout)).encode()))
    logits = _make_logits(lead, V, layout, torch.float32, gen)
    labels = _make_labels(lead, V, gen)
    g_lp, g_ent = torch.randn(lead, generator=gen), torch.randn(lead, generator=gen)
    lp, ent, grad = _run(_ours(backend, entropy), logits, labels, temperature, entropy, g_lp, g_ent)
    lp_r, ent_r, grad_r = _run(_twin(entropy), logits, labels, temperature, entropy, g_lp, g_ent)
    assert lp.dtype == torch.float32 and lp.shape == labels.shape
    torch.testing.assert_close(lp, lp_r, rtol=1e-5, atol=1e-5)
    if entropy:
        torch.testing.assert_close(ent, ent_r, rtol=1e-5, atol=1e-5)
    assert grad.dtype == logits.dtype
    torch.testing.assert_close(grad, grad_r, rtol=1e-5, atol=2e-6)
    # invariants: log-probs <= 0, ignored positions exactly 0 with exactly zero gradient
    ignored = labels == -100
    assert (lp <= 0).all()
    assert (lp[ignored] == 0).all()
    assert (grad[ignored] == 0).all()
    if entropy:
        assert (ent[ignored] == 0).all()
        assert (ent >= -1e-6).all() and (ent <= math.log(V) + 1e-5).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_no_worse_than_eager(backend, dtype, small_chunks, no_worse_than_eager, unit_roundoff):
    gen = torch.Generator().manual_seed(7)
    lead, V, t = (3, 6), 77, 0.8
    logits = _make_logits(lead, V, "shifted", dtype, gen)
    labels = _make_labels(lead, V, gen)
    g_lp, g_ent = torch.randn(lead, generator=gen), torch.randn(lead, generator=gen)
    lp, ent, grad = _run(_ours(backend, True), logits, labels, t, True, g_lp, g_ent)
    truth_lp, truth_ent, truth_grad = _run(_fp64_truth, logits.double(), labels, t, True, g_lp.double(),
                                           g_ent.double())
    # eager in the low precision itself (what a model computing log_softmax in bf16 gets)
    eager_lp = torch.log_softmax(logits / t, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    eager_lp = eager_lp.float().masked_fill(labels == -100, 0.0)
    eager_p = torch.softmax(logits / t, -1)
    eager_ent = -(eager_p * torch.log_softmax(logits / t, -1)).sum(-1).float().masked_fill(labels == -100, 0.0)
    _, _, eager_grad = _run(_twin(True), logits, labels, t, True, g_lp, g_ent)
    assert lp.dtype == torch.float32 and grad.dtype == dtype
    no_worse_than_eager(lp, eager_lp, truth_lp, rtol=1e-6, atol=1e-6, what="logprobs")
    no_worse_than_eager(ent, eager_ent, truth_ent, rtol=1e-6, atol=1e-6, what="entropy")
    grad_rtol = unit_roundoff[dtype] * (2 if (backend == "triton" and dtype == torch.bfloat16) else 1)
    no_worse_than_eager(grad, eager_grad, truth_grad, rtol=grad_rtol, atol=1e-7, what="grad")
    assert (lp <= 0).all()


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])   # the twin must not give NaN gradients either
def test_extreme_logits(backend, small_chunks):
    """Large magnitudes and -inf entries (a banned or padded vocabulary slot) stay finite."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 50, generator=gen) * 1e4
    logits[:, 45:] = float("-inf")
    logits[2, :20] = float("-inf")  # a row whose first vocabulary block (16 here) is all -inf
    logits[0, :45] = 0.0  # uniform over the 45 allowed tokens
    labels = torch.tensor([3, 10, 44, 0])
    x = logits.clone().requires_grad_(True)
    lp, ent = gather_logprobs(x, labels, return_entropy=True, backend=backend)
    (lp.sum() + ent.sum()).backward()
    ref, _ = _fp64_truth(logits, labels, 1.0)
    torch.testing.assert_close(lp.double(), ref, rtol=1e-6, atol=1e-4)
    assert torch.isfinite(ent).all() and torch.isfinite(x.grad).all()
    assert lp[0].item() == pytest.approx(-math.log(45), abs=1e-6)
    assert ent[0].item() == pytest.approx(math.log(45), abs=1e-5)
    assert (x.grad[:, 45:] == 0).all() and (x.grad[2, :20] == 0).all()


def test_reference_backend_is_the_twin():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=gen)
    labels = torch.randint(0, 11, (2, 3), generator=gen)
    out = gather_logprobs(logits, labels, 0.9, backend="reference")
    assert torch.equal(out, gather_logprobs_reference(logits, labels, 0.9))


def test_argument_errors():
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="temperature"):
        gather_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="labels"):
        gather_logprobs(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="allowed: auto, triton, torch, reference"):
        gather_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), backend="cuda")


def test_torch_path_never_allocates_n_by_v(small_chunks):
    """Structural check of the memory claim: no temporary holds more than one chunk of rows
    (forward and backward); the only N x V allocation is the gradient that autograd needs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        """Largest fresh allocation (an output storage that no input shares) made by any op."""

        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            flat_in = torch.utils._pytree.tree_leaves((args, kwargs))
            seen = {t.untyped_storage().data_ptr() for t in flat_in if isinstance(t, torch.Tensor)}
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    self.sizes.append(t.untyped_storage().nbytes())
            return out

    N, V = 64, 64
    logits = torch.randn(N, V, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, V, (N,))
    chunk_bytes = 4 * small_chunks.torch_chunk_rows(V) * V  # one fp32 chunk
    assert chunk_bytes < 4 * N * V
    with Largest() as fwd:
        lp, ent = gather_logprobs(logits, labels, 0.5, return_entropy=True, backend="torch")
    assert max(fwd.sizes) <= chunk_bytes
    with Largest() as bwd:
        (lp.sum() + ent.sum()).backward()
    big = [n for n in bwd.sizes if n > chunk_bytes]
    assert big == [N * V * logits.element_size()]  # only the gradient itself
