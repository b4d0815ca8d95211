"""Compiled Triton kernels on a CUDA device (skipped without one; see the root conftest).

Same tolerances as the CPU tests: fp32 against the twins; bf16 judged against fp64 with
|ours - fp64| <= |eager - fp64| + tolerance. Includes a gather over N * V > 2**31
elements (int64 offsets) and both GAE scan strategies over many blocks.
"""
import importlib

import pytest
import torch

import rlhf_kernels
from rlhf_kernels import (
    fused_linear_logprobs,
    fused_linear_logprobs_reference,
    gae,
    gae_reference,
    gather_logprobs,
    gather_logprobs_reference,
    kl_shaped_rewards,
    kl_shaped_rewards_reference,
)
from rlhf_kernels.gather_logprobs import entropy_reference

pytestmark = pytest.mark.gpu

gae_module = importlib.import_module("rlhf_kernels.gae")
flp_module = importlib.import_module("rlhf_kernels.fused_linear_logprobs")
DEV = "cuda"


def _fp64_logprobs(logits, labels, temperature):
    logp = torch.log_softmax(logits.double() / temperature, -1)
    return logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(labels == -100, 0.0)


def test_auto_dispatches_to_triton_on_cuda(monkeypatch):
    module = importlib.import_module("rlhf_kernels.gather_logprobs")
    calls = []
    original = module.triton_logprobs_fwd
    monkeypatch.setattr(module, "triton_logprobs_fwd", lambda *a, **k: calls.append(1) or original(*a, **k))
    logits = torch.randn(4, 100, device=DEV)
    gather_logprobs(logits, torch.randint(0, 100, (4,), device=DEV))
    assert calls == [1]


@pytest.mark.parametrize("V", [32000, 151936, 50257])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gather_logprobs_compiled(V, dtype):
    gen = torch.Generator(device=DEV).manual_seed(V)
    base = torch.randn(3, 65, V, device=DEV, generator=gen, dtype=torch.float32).mul_(4).to(dtype)
    logits = base[:, :-1]                                       # strided view, read in place
    labels = torch.randint(0, V, (3, 64), device=DEV, generator=gen)
    labels[0, ::5] = -100
    g_lp, g_ent = torch.randn(3, 64, device=DEV), torch.randn(3, 64, device=DEV)
    x = base.clone().requires_grad_(True)
    lp, ent = gather_logprobs(x[:, :-1], labels, 0.8, return_entropy=True, backend="triton")
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    xr = base.clone().requires_grad_(True)
    lp_r = gather_logprobs_reference(xr[:, :-1], labels, 0.8)
    ent_r = entropy_reference(xr[:, :-1], labels, 0.8)
    ((lp_r * g_lp).sum() + (ent_r * g_ent).sum()).backward()
    torch.testing.assert_close(lp, lp_r, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ent, ent_r, rtol=1e-5, atol=1e-4)
    if dtype == torch.float32:
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-6)
    else:  # both round (nearly) the same fp32 gradient to the low precision: one ulp apart at most
        ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10  # spacing / |value| <= 2 u
        err = (x.grad.double() - xr.grad.double()).abs()
        assert (err <= ulp * xr.grad.double().abs() + 1e-6).all()
    assert (lp <= 0).all() and (lp[labels == -100] == 0).all()
    truth = _fp64_logprobs(logits, labels, 0.8)
    eager = torch.log_softmax(logits / 0.8, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    eager = eager.float().masked_fill(labels == -100, 0.0)
    assert ((lp.double() - truth).abs() <= (eager.double() - truth).abs() + 1e-5).all()


def test_gather_logprobs_int64_offsets():
    """N * V > 2**31 elements: rows at the end of the tensor must be read and written right."""
    V = 128256
    N = 2**31 // V + 257  # 17001 rows: 2.18e9 elements, 4.4 GB in bf16 (and as much for the gradient)
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * N * V * 2:
        pytest.skip("needs ~14 GB of free GPU memory")
    logits = torch.empty(N, V, device=DEV, dtype=torch.bfloat16).normal_(0, 3).requires_grad_(True)
    labels = torch.randint(0, V, (N,), device=DEV)
    assert logits.numel() > 2**31
    lp = gather_logprobs(logits, labels, backend="triton")
    g = torch.randn(N, device=DEV)
    (lp * g).sum().backward()
    rows = torch.cat([torch.arange(0, 4), torch.arange(N - 300, N)]).to(DEV)  # the last rows pass 2**31
    sub = logits.detach()[rows].clone().requires_grad_(True)
    lp_r = gather_logprobs_reference(sub, labels[rows])
    (lp_r * g[rows]).sum().backward()
    torch.testing.assert_close(lp[rows], lp_r, rtol=1e-5, atol=1e-4)
    err = (logits.grad[rows].double() - sub.grad.double()).abs()
    assert (err <= 2.0**-7 * sub.grad.double().abs() + 1e-6).all()  # one bf16 ulp


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_logprobs_compiled(dtype):
    gen = torch.Generator(device=DEV).manual_seed(0)
    N, H, V = 1000, 256, 32003
    hidden = torch.randn(N, H, device=DEV, generator=gen).to(dtype)
    weight = (torch.randn(V, H, device=DEV, generator=gen) / H**0.5).to(dtype)
    labels = torch.randint(0, V, (N,), device=DEV, generator=gen)
    labels[::7] = -100
    g = torch.randn(N, device=DEV)
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    (fused_linear_logprobs(h, w, labels, 0.9, chunk_size=96, backend="triton") * g).sum().backward()
    h_r, w_r = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp_r = fused_linear_logprobs_reference(h_r, w_r, labels, 0.9)
    (lp_r * g).sum().backward()
    lp = fused_linear_logprobs(hidden, weight, labels, 0.9, backend="triton")
    if dtype == torch.float32:
        torch.testing.assert_close(lp, lp_r, rtol=1e-4, atol=1e-4)   # TF32-free fp32 GEMMs may still differ
        torch.testing.assert_close(h.grad, h_r.grad, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(w.grad, w_r.grad, rtol=1e-3, atol=1e-5)
    else:  # in norm: both round logits to bf16 in their GEMMs (see the CPU test's docstring)
        truth_h, truth_w = hidden.double().requires_grad_(True), weight.double().requires_grad_(True)
        logp = torch.log_softmax((truth_h @ truth_w.t()) / 0.9, -1)
        lp_t = logp.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1).masked_fill(labels == -100, 0)
        (lp_t * g.double()).sum().backward()
        assert (lp.double() - lp_t).norm() <= 1.5 * (lp_r.double() - lp_t).norm() + 1e-3
        assert (h.grad.double() - truth_h.grad).norm() <= 1.5 * (h_r.grad.double() - truth_h.grad).norm()
        assert (w.grad.double() - truth_w.grad).norm() <= 1.5 * (w_r.grad.double() - truth_w.grad).norm()
    assert flp_module._out_dtype_mm_works in (None, True, False)


def test_kl_shaped_rewards_compiled():
    gen = torch.Generator(device=DEV).manual_seed(1)
    B, T = 64, 3000
    lp = torch.randn(B, T, device=DEV, generator=gen) - 2
    ref = lp + 0.1 * torch.randn(B, T, device=DEV, generator=gen)
    mask = torch.rand(B, T, device=DEV, generator=gen) > 0.2
    mask[3] = False
    scores = torch.randn(B, device=DEV, generator=gen)
    for est in ("k1", "k2", "k3"):
        r, kl = kl_shaped_rewards(scores, lp.bfloat16(), ref.bfloat16(), mask, 0.05, est, backend="triton")
        r_r, kl_r = kl_shaped_rewards_reference(scores, lp.bfloat16(), ref.bfloat16(), mask, 0.05, est)
        torch.testing.assert_close(kl, kl_r, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r, r_r, rtol=1e-4, atol=1e-6)


def test_gae_reverse_scan_self_check_passes():
    """If this fails, the compiled tl.associative_scan(reverse=True) is wrong on this device;
    `gae` still returns right answers through the flipped scan (next test)."""
    gae_module._scan_ok.clear()
    assert gae_module._reverse_scan_ok(torch.device(DEV))


@pytest.mark.parametrize("B,T", [(64, 1024), (8, 32768), (5, 1), (3, 1500)])
@pytest.mark.parametrize("reverse_scan", [True, False], ids=["reverse", "flipped"])
def test_gae_compiled(B, T, reverse_scan):
    gen = torch.Generator(device=DEV).manual_seed(T)
    r = torch.randn(B, T, device=DEV, generator=gen)
    v = torch.randn(B, T, device=DEV, generator=gen)
    m = torch.rand(B, T, device=DEV, generator=gen) > 0.3
    adv, ret = gae_module.triton_gae(r, v, m, 0.99, 0.95, reverse_scan=reverse_scan)
    adv_r, ret_r = gae_reference(r.cpu(), v.cpu(), m.cpu(), 0.99, 0.95)
    tol = 2e-5 * max(1.0, T / 1024)  # long rows accumulate more rounding in either order
    torch.testing.assert_close(adv.cpu(), adv_r, rtol=tol, atol=tol)
    torch.testing.assert_close(ret.cpu(), ret_r, rtol=tol, atol=tol)
    adv_pub, _ = gae(r, v, m, 0.99, 0.95)
    torch.testing.assert_close(adv_pub.cpu(), adv_r, rtol=tol, atol=tol)


def test_torch_backend_on_cuda_matches_too():
    with rlhf_kernels.use_backend("torch"):
        r = torch.randn(4, 300, device=DEV)
        m = torch.rand(4, 300, device=DEV) > 0.5
        adv, _ = gae(r, r, m, 0.9, 0.9)
    torch.testing.assert_close(adv.cpu(), gae_reference(r.cpu(), r.cpu(), m.cpu(), 0.9, 0.9)[0],
                               rtol=1e-5, atol=1e-5)
