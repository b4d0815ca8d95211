"""per_token_kl and kl_shaped_rewards: Triton (interpreted) and torch paths against the twins.

Tolerances: k1 and k2 are computed with the same fp32 operations as the twin and must
agree to 1e-6 (relative and absolute). k3 is judged against fp64 (exp(-x) - 1 + x from
the same fp32 log-ratio): ours is no worse than the twin + 2e-6 relative, because the
twin's expm1 form loses precision for tiny ratios and ours uses a series there.
Low-precision inputs (bf16, fp16 log-probs) are upcast exactly, so the same bounds hold.
"""
import pytest
import torch

from rlhf_kernels import kl_shaped_rewards, kl_shaped_rewards_reference, per_token_kl, per_token_kl_reference

BACKENDS = [pytest.param("torch", id="torch"),
            pytest.param("triton", id="triton", marks=pytest.mark.triton_interp)]
ESTIMATORS = ["k1", "k2", "k3"]


def _inputs(B, T, dtype=torch.float32, seed=0, spread=0.05):
    gen = torch.Generator().manual_seed(seed)
    logprobs = (torch.randn(B, T, generator=gen) * 0.5 - 2.0).to(dtype)
    ref = (logprobs.float() + torch.randn(B, T, generator=gen) * spread).to(dtype)
    mask = torch.rand(B, T, generator=gen) > 0.25
    if B > 1:
        mask[1] = False                       # a row without response tokens
    if B > 2:
        mask[2, T // 2:] = False              # trailing padding
    scores = torch.randn(B, generator=gen)
    return scores, logprobs, ref, mask


def _k3_fp64(logprobs, ref, mask):
    x = (logprobs.float() - ref.float()).double().clamp(-20, 20)
    return torch.where(mask, torch.expm1(-x) + x, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("B,T", [(4, 37), (3, 1), (1, 1500)])  # odd T, T = 1, several blocks
def test_matches_twin(backend, estimator, B, T):
    scores, lp, ref, mask = _inputs(B, T, seed=T)
    rewards, kl = kl_shaped_rewards(scores, lp, ref, mask, 0.05, estimator, backend=backend)
    rewards_r, kl_r = kl_shaped_rewards_reference(scores, lp, ref, mask, 0.05, estimator)
    kl_only = per_token_kl(lp, ref, mask, estimator, backend=backend)
    assert kl.dtype == rewards.dtype == torch.float32 and kl.shape == (B, T)
    if estimator == "k3":
        truth = _k3_fp64(lp, ref, mask)
        for ours in (kl, kl_only):
            err, err_twin = (ours.double() - truth).abs(), (kl_r.double() - truth).abs()
            assert (err <= err_twin + 2e-6 * truth.abs() + 1e-12).all()
        torch.testing.assert_close(rewards, rewards_r, rtol=1e-5, atol=1e-7)
    else:
        torch.testing.assert_close(kl, kl_r, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(kl_only, kl_r, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(rewards, rewards_r, rtol=1e-6, atol=1e-6)
    off = ~mask
    assert (kl[off] == 0).all() and (rewards[off] == 0).all()
    if estimator != "k1":
        assert (kl >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_score_lands_on_last_response_token(backend):
    lp = torch.zeros(4, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0],
                         [0, 1, 0, 1, 1, 0],   # holes: last is index 4
                         [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    rewards, kl = kl_shaped_rewards(scores, lp, lp, mask, 0.1, "k1", backend=backend)
    expected = torch.zeros(4, 6)
    expected[0, 2], expected[2, 4], expected[3, 5] = 1.0, 3.0, 4.0
    assert torch.equal(rewards, expected) and torch.equal(kl, torch.zeros(4, 6))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs(backend, dtype):
    scores, lp, ref, mask = _inputs(3, 40, dtype=dtype, seed=5)
    for estimator in ESTIMATORS:
        rewards, kl = kl_shaped_rewards(scores, lp, ref, mask.int(), 0.1, estimator, backend=backend)
        rewards_r, kl_r = kl_shaped_rewards_reference(scores, lp, ref, mask, 0.1, estimator)
        torch.testing.assert_close(kl, kl_r, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rewards, rewards_r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k3_accuracy_and_clamp(backend):
    x = torch.cat([torch.logspace(-7, 1.3, 60), -torch.logspace(-7, 1.3, 60), torch.tensor([0.0, 30.0, -30.0])])
    lp = (x - 3.0).view(1, -1)
    ref = torch.full_like(lp, -3.0)
    mask = torch.ones_like(lp, dtype=torch.bool)
    ours = per_token_kl(lp, ref, mask, "k3", backend=backend).double()
    truth = _k3_fp64(lp, ref, mask)
    rel = ((ours - truth).abs() / truth.abs().clamp(min=1e-30))
    assert rel.max() < 1e-5          # the fp32 twin (expm1 + x) is off by up to ~10% at |x| ~ 1e-4
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradients(backend, estimator):
    scores, lp, ref, mask = _inputs(3, 9, seed=2, spread=0.3)
    ref[0, 0] = lp[0, 0] + 25.0                # beyond the k3 clamp: no gradient there
    leaves = [t.clone().requires_grad_(True) for t in (scores, lp, ref)]
    leaves_r = [t.clone().requires_grad_(True) for t in (scores, lp, ref)]
    w_r, w_k = torch.randn(3, 9), torch.randn(3, 9)
    rewards, kl = kl_shaped_rewards(leaves[0], leaves[1], leaves[2], mask, 0.2, estimator, backend=backend)
    rewards_r, kl_r = kl_shaped_rewards_reference(leaves_r[0], leaves_r[1], leaves_r[2], mask, 0.2, estimator)
    ((rewards * w_r).sum() + (kl * w_k).sum()).backward()
    ((rewards_r * w_r).sum() + (kl_r * w_k).sum()).backward()
    for a, b in zip(leaves, leaves_r):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    lp_leaf = lp.clone().requires_grad_(True)
    per_token_kl(lp_leaf, ref, mask, estimator, backend=backend).sum().backward()
    lp_leaf_r = lp.clone().requires_grad_(True)
    per_token_kl_reference(lp_leaf_r, ref, mask, estimator).sum().backward()
    torch.testing.assert_close(lp_leaf.grad, lp_leaf_r.grad, rtol=1e-5, atol=1e-6)


def test_strided_inputs_and_reference_backend():
    scores, lp, ref, mask = _inputs(4, 20, seed=9)
    wide = torch.randn(4, 25)
    wide[:, 2:22] = lp
    lp_view = wide[:, 2:22]                         # non-contiguous view
    out = kl_shaped_rewards(scores, lp_view, ref, mask, 0.1, "k2", backend="torch")
    ref_out = kl_shaped_rewards(scores, lp, ref, mask, 0.1, "k2", backend="reference")
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b)


def test_argument_errors():
    _, lp, ref, mask = _inputs(2, 5)
    with pytest.raises(ValueError, match="allowed: k1, k2, k3"):
        per_token_kl(lp, ref, mask, "k4")
    with pytest.raises(ValueError, match="same"):
        per_token_kl(lp, ref[:, :3], mask)
    with pytest.raises(ValueError, match="scores"):
        kl_shaped_rewards(torch.zeros(3), lp, ref, mask, 0.1)
