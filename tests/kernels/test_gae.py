"""GAE: the Triton reverse scan (interpreted) and the blocked torch scan against the loop twin.

Tolerance: fp32 throughout; the scans associate the recurrence differently from the
loop, so |ours - twin| <= 2e-5 (1 + |twin|). Masked-out positions must be exactly 0.
"""
import importlib

import pytest
import torch

from rlhf_kernels import gae, gae_reference

gae_module = importlib.import_module("rlhf_kernels.gae")

BACKENDS = [pytest.param("torch", id="torch"),
            pytest.param("triton", id="triton", marks=pytest.mark.triton_interp)]


def _inputs(B, T, seed, holes=True, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=gen).to(dtype)
    values = torch.randn(B, T, generator=gen).to(dtype)
    if holes:
        mask = torch.rand(B, T, generator=gen) > 0.3
    else:  # left-padded prompt, response, right padding: one run per row
        start = torch.randint(0, max(T // 2, 1), (B, 1), generator=gen)
        length = torch.randint(1, T + 1, (B, 1), generator=gen)
        pos = torch.arange(T).unsqueeze(0)
        mask = (pos >= start) & (pos < start + length)
    if B > 1:
        mask[1] = False  # an empty row
    return rewards, values, mask


def _check(ours, twin, mask):
    for o, t in zip(ours, twin):
        assert o.dtype == torch.float32 and o.shape == t.shape
        torch.testing.assert_close(o, t, rtol=2e-5, atol=2e-5)
        assert (o[~mask.bool()] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,T", [(3, 1), (4, 37), (2, 64), (3, 130)])
@pytest.mark.parametrize("holes", [True, False], ids=["holes", "runs"])
def test_matches_loop(backend, B, T, holes):
    r, v, m = _inputs(B, T, seed=T, holes=holes)
    for gamma, lam in [(0.99, 0.95), (1.0, 1.0), (0.9, 0.0)]:
        _check(gae(r, v, m, gamma, lam, backend=backend), gae_reference(r, v, m, gamma, lam), m)


@pytest.mark.triton_interp
@pytest.mark.parametrize("reverse_scan", [True, False], ids=["reverse", "flipped"])
@pytest.mark.parametrize("T,block", [(50, 16), (33, 32), (7, 4)])
def test_triton_blocks_carry_state(reverse_scan, T, block):
    """Several blocks per row (the carry between them), both scan strategies."""
    r, v, m = _inputs(3, T, seed=block)
    m[0, block - 1] = False         # a hole exactly at a block boundary
    m[2, block] = False
    ours = gae_module.triton_gae(r, v, m, 0.97, 0.9, reverse_scan=reverse_scan, block_t=block)
    _check(ours, gae_reference(r, v, m, 0.97, 0.9), m)


@pytest.mark.parametrize("T,block", [(50, 7), (64, 8), (100, 1), (9, 9), (1000, None), (4096, None)])
def test_torch_blocked_scan(T, block):
    for holes in (True, False):
        r, v, m = _inputs(2, T, seed=T, holes=holes)
        _check(gae_module.torch_gae(r, v, m, 0.99, 0.95, block=block), gae_reference(r, v, m, 0.99, 0.95), m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_with_hole(backend):
    # t:      0    1    2(hole) 3
    r = torch.tensor([[1.0, 0.0, 5.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 9.0, 1.5]])
    m = torch.tensor([[1, 1, 0, 1]])
    g, lam = 0.5, 0.5
    # t=3: delta = 2 - 1.5 = 0.5, A = 0.5
    # t=1: next valid is t=3: delta = 0 + 0.5*1.5 - 1 = -0.25; A = -0.25 + 0.25*0.5 = -0.125
    # t=0: delta = 1 + 0.5*1.0 - 0.5 = 1.0; A = 1.0 + 0.25*(-0.125) = 0.96875
    adv, ret = gae(r, v, m, g, lam, backend=backend)
    assert torch.allclose(adv, torch.tensor([[0.96875, -0.125, 0.0, 0.5]]))
    assert torch.allclose(ret, torch.tensor([[1.46875, 0.875, 0.0, 2.0]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_garbage_under_the_mask_is_ignored(backend):
    """NaN/inf in masked-out rewards or values must not leak (the twin's where() drops them)."""
    r, v, m = _inputs(3, 20, seed=4)
    r2, v2 = r.clone(), v.clone()
    r2[~m], v2[~m] = float("nan"), float("inf")
    _check(gae(r2, v2, m, 0.99, 0.95, backend=backend), gae_reference(r, v, m, 0.99, 0.95), m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_and_strided_inputs(backend):
    r, v, m = _inputs(3, 40, seed=8, dtype=torch.bfloat16)
    wide = torch.zeros(3, 50, dtype=torch.bfloat16)
    wide[:, 5:45] = v
    _check(gae(r, wide[:, 5:45], m.float(), 0.99, 0.95, backend=backend), gae_reference(r, v, m, 0.99, 0.95), m)


def test_differentiable_inputs_take_a_differentiable_path():
    r, v, m = _inputs(2, 10, seed=1)
    v = v.requires_grad_(True)
    adv, ret = gae(r, v, m, 0.9, 0.9, backend="torch")
    assert ret.requires_grad
    ret.sum().backward()
    assert v.grad is not None


def test_argument_errors():
    r, v, m = _inputs(2, 5, seed=0)
    with pytest.raises(ValueError, match="gamma"):
        gae(r, v, m, 1.5, 0.9)
    with pytest.raises(ValueError, match="same"):
        gae(r, v[:, :3], m, 0.9, 0.9)
    with pytest.raises(ValueError, match="allowed"):
        gae(r, v, m, 0.9, 0.9, backend="scan")
