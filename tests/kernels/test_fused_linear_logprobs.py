"""fused_linear_logprobs against `gather_logprobs(hidden @ weight.T, labels, temperature)`.

Tolerances: fp32, |ours - twin| <= 1e-5 + 1e-5 |twin| for log-probs and entropy and
1e-5 + 1e-4 |twin| for gradients (the chunked GEMMs sum in a different order). bf16:
log-probs and entropy no worse than eager against fp64 + 1e-5; gradients no worse than
eager + 2u (u = 2**-8) of the tensor's largest magnitude, elementwise, and within 1.5x
eager's error in norm (3u and 2.5x under the Triton interpreter, whose bf16 stores
truncate where the GPU rounds to nearest: a bias that the weight gradient sums). The
scale-relative bound is needed because both paths round the logits to bf16 in their
GEMM, and a (C, H) x (H, V) chunk GEMM may round an element differently from eager's
(N, H) x (H, V) one: that noise, not the fused math, dominates the gradient error.
"""
import pytest
import torch

from rlhf_kernels import fused_linear_logprobs, fused_linear_logprobs_reference
from rlhf_kernels.gather_logprobs import entropy_reference

BACKENDS = [pytest.param("torch", id="torch"),
            pytest.param("triton", id="triton", marks=pytest.mark.triton_interp)]


def _inputs(lead, H, V, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*lead, H, generator=gen, dtype=torch.float64)).to(dtype)
    weight = (torch.randn(V, H, generator=gen, dtype=torch.float64) / H ** 0.5).to(dtype)
    labels = torch.randint(0, V, lead, generator=gen)
    labels.view(-1)[::3] = -100
    return hidden, weight, labels, torch.randn(lead, generator=gen), torch.randn(lead, generator=gen)


def _run(fn, hidden, weight, labels, g_lp, g_ent):
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    lp, ent = fn(h, w, labels)
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


def _ours(backend, temperature, chunk_size=None):
    return lambda h, w, y: fused_linear_logprobs(h, w, y, temperature, return_entropy=True,
                                                 chunk_size=chunk_size, backend=backend)


def _twin(temperature):
    def fn(h, w, y):
        return (fused_linear_logprobs_reference(h, w, y, temperature),
                entropy_reference(h @ w.t(), y, temperature))
    return fn


def _fp64(temperature):
    def fn(h, w, y):
        logp = torch.log_softmax((h.double() @ w.double().t()) / temperature, -1)
        ignored = y == -100
        lp = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(ignored, 0.0)
        ent = -(logp.exp() * logp).sum(-1).masked_fill(ignored, 0.0)
        return lp, ent
    return fn


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead,H,V,chunk", [((2, 5), 16, 37, 3), ((7,), 8, 64, None), ((1, 1), 5, 11, 1)])
def test_fp32_matches_twin(backend, lead, H, V, chunk, small_chunks):
    hidden, weight, labels, g_lp, g_ent = _inputs(lead, H, V, torch.float32, seed=V)
    lp, ent, gh, gw = _run(_ours(backend, 0.9, chunk), hidden, weight, labels, g_lp, g_ent)
    lp_r, ent_r, gh_r, gw_r = _run(_twin(0.9), hidden, weight, labels, g_lp, g_ent)
    torch.testing.assert_close(lp, lp_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, gh_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, gw_r, rtol=1e-4, atol=1e-5)
    assert (lp <= 0).all() and (lp[labels == -100] == 0).all()
    assert (gh[labels == -100] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_no_worse_than_eager(backend, no_worse_than_eager, unit_roundoff, small_chunks):
    hidden, weight, labels, g_lp, g_ent = _inputs((3, 4), 32, 50, torch.bfloat16, seed=11)
    lp, ent, gh, gw = _run(_ours(backend, 1.0, 5), hidden, weight, labels, g_lp, g_ent)
    lp_e, ent_e, gh_e, gw_e = _run(_twin(1.0), hidden, weight, labels, g_lp, g_ent)
    lp_t, ent_t, gh_t, gw_t = _run(_fp64(1.0), hidden.double(), weight.double(), labels,
                                   g_lp.double(), g_ent.double())
    assert gh.dtype == gw.dtype == torch.bfloat16 and lp.dtype == torch.float32
    n_u, norm_factor = (3, 2.5) if backend == "triton" else (2, 1.5)
    no_worse_than_eager(lp, lp_e, lp_t, rtol=1e-5, atol=1e-5, what="logprobs")
    no_worse_than_eager(ent, ent_e, ent_t, rtol=1e-5, atol=1e-5, what="entropy")
    for ours, eager, truth, what in [(gh, gh_e, gh_t, "grad hidden"), (gw, gw_e, gw_t, "grad weight")]:
        scale = truth.abs().max().item()
        no_worse_than_eager(ours, eager, truth, rtol=0.0, atol=n_u * unit_roundoff[torch.bfloat16] * scale, what=what)
        assert (ours.double() - truth).norm() <= norm_factor * (eager.double() - truth).norm(), what


def test_frozen_weight_and_no_grad(small_chunks):
    hidden, weight, labels, g_lp, _ = _inputs((2, 3), 8, 20, torch.float32, seed=5)
    h = hidden.clone().requires_grad_(True)
    lp = fused_linear_logprobs(h, weight, labels, backend="torch")  # weight needs no grad
    (lp * g_lp).sum().backward()
    h_r = hidden.clone().requires_grad_(True)
    (fused_linear_logprobs_reference(h_r, weight, labels) * g_lp).sum().backward()
    torch.testing.assert_close(h.grad, h_r.grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the reference-model forward
        out = fused_linear_logprobs(hidden, weight, labels, backend="torch")
    assert not out.requires_grad
    torch.testing.assert_close(out, fused_linear_logprobs_reference(hidden, weight, labels), rtol=1e-5, atol=1e-5)


def test_argument_errors():
    h, w, y = torch.randn(2, 3, 4), torch.randn(5, 4), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="weight"):
        fused_linear_logprobs(h, torch.randn(5, 3), y)
    with pytest.raises(ValueError, match="dtype"):
        fused_linear_logprobs(h, w.double(), y)
    with pytest.raises(ValueError, match="labels"):
        fused_linear_logprobs(h, w, y[:, :2])
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_logprobs(h, w, y, chunk_size=0)
    with pytest.raises(ValueError, match="allowed"):
        fused_linear_logprobs(h, w, y, backend="fast")
