import math

import pytest
import torch

from rlhf_ds.rl import explained_variance, value_loss


def loop_value(values, old_values, returns, mask, value_clip, num_tokens=None):
    """PPO2's clipped value loss token by token, with d loss / d values by hand."""
    B, T = values.shape
    tokens = [(b, t) for b in range(B) for t in range(T) if mask[b, t]]
    n = num_tokens if num_tokens is not None else len(tokens)
    total, clipped = 0.0, 0
    grad = torch.zeros(B, T, dtype=torch.float64)
    for b, t in tokens:
        v, old, r = float(values[b, t]), float(old_values[b, t]), float(returns[b, t])
        err = (v - r) ** 2
        if value_clip is None:
            total += err
            grad[b, t] = (v - r) / n
            continue
        v_clip = old + min(max(v - old, -value_clip), value_clip)
        err_clip = (v_clip - r) ** 2
        total += max(err, err_clip)
        if err_clip > err:
            clipped += 1  # the active branch is constant in v: no gradient
        else:
            grad[b, t] = (v - r) / n
    return 0.5 * total / n, clipped / len(tokens), grad


def loop_explained_variance(values, returns, mask):
    pairs = [(float(v), float(r)) for v, r, m in zip(values.flatten(), returns.flatten(), mask.flatten()) if m]
    def var(xs):
        mean = sum(xs) / len(xs)
        return sum((x - mean) ** 2 for x in xs) / len(xs)
    return 1 - var([r - v for v, r in pairs]) / var([r for _, r in pairs])


def random_case(seed):
    g = torch.Generator().manual_seed(seed)
    returns = torch.randn(3, 6, generator=g)
    old = returns + 0.5 * torch.randn(3, 6, generator=g)
    values = old + 0.4 * torch.randn(3, 6, generator=g)
    mask = torch.rand(3, 6, generator=g) > 0.3
    mask[0, 0] = True
    return values, old, returns, mask


@pytest.mark.parametrize("value_clip", [None, 0.2, 0.5])
def test_matches_loop_including_gradient(value_clip):
    values, old, returns, mask = random_case(0)
    values.requires_grad_(True)
    loss, stats = value_loss(values, old, returns, mask, value_clip)
    want_loss, want_clip_fraction, want_grad = loop_value(values.detach(), old, returns, mask, value_clip)
    assert math.isclose(loss.item(), want_loss, rel_tol=1e-5)
    (grad,) = torch.autograd.grad(loss, values)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-6, rtol=1e-5)
    ev = loop_explained_variance(values.detach(), returns, mask)
    assert math.isclose(stats["explained_variance"].item(), ev, rel_tol=1e-4)
    if value_clip is None:
        assert "value_clip_fraction" not in stats
    else:
        assert 0 < want_clip_fraction < 1
        assert math.isclose(stats["value_clip_fraction"].item(), want_clip_fraction, rel_tol=1e-6)


def test_hand_values():
    # value_clip 0.2:
    #   V=1, V_old=0.5,    R=2: err 1, V_clip = 0.7, err_clip 1.69  -> 1.69 (clipped)
    #   V=2, V_old=2.0625, R=1: err 1, V_clip = 2 (inside the clip) -> 1
    #   V=0, V_old=1,      R=0: err 0, V_clip = 0.8, err_clip 0.64  -> 0.64 (clipped)
    #   4th token masked (NaN value)
    # loss = 0.5 * (1.69 + 1 + 0.64) / 3 = 0.555; unclipped: 0.5 * (1 + 1 + 0) / 3 = 1/3
    # value_clip_fraction = 2/3; value_mean = 1; value_error = 2/3
    # explained variance: Var[R = (2, 1, 0)] = 2/3, Var[R - V = (1, -1, 0)] = 2/3 -> 0
    values = torch.tensor([[1.0, 2.0, 0.0, float("nan")]])
    old = torch.tensor([[0.5, 2.0625, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, value_clip=0.2)
    assert math.isclose(loss.item(), 0.555, rel_tol=1e-6)
    assert math.isclose(stats["value_clip_fraction"].item(), 2 / 3, rel_tol=1e-6)
    assert math.isclose(stats["value_mean"].item(), 1.0, rel_tol=1e-6)
    assert math.isclose(stats["value_error"].item(), 2 / 3, rel_tol=1e-6)
    assert abs(stats["explained_variance"].item()) < 1e-6
    loss, _ = value_loss(values, old, returns, mask)
    assert math.isclose(loss.item(), 1 / 3, rel_tol=1e-6)


def test_explained_variance_hand_values_and_degenerate_cases():
    # R = (1, 2, 3, 4): Var = 1.25. V = (1, 2, 3, 3): R - V = (0, 0, 0, 1), Var = 0.1875
    # EV = 1 - 0.1875 / 1.25 = 0.85. A perfect critic gives 1.
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert math.isclose(explained_variance(torch.tensor([[1.0, 2.0, 3.0, 3.0]]), r, mask).item(), 0.85,
                        rel_tol=1e-6)
    assert explained_variance(r, r, mask).item() == 1.0
    assert math.isnan(explained_variance(r, torch.ones(1, 4), mask).item())  # Var[R] = 0
    assert math.isnan(explained_variance(r, r, torch.zeros(1, 4)).item())    # no token


def test_gradient_finite_with_garbage_padding():
    values = torch.tensor([[1.0, float("inf")]], requires_grad=True)
    loss, _ = value_loss(values, torch.tensor([[0.0, float("nan")]]), torch.tensor([[0.0, float("nan")]]),
                         torch.tensor([[1, 0]]), value_clip=0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(values.grad).all()


def test_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"shape mismatch: .*returns \(3, 2\)"):
        value_loss(x, x, torch.zeros(3, 2), x)
    with pytest.raises(ValueError, match="value_clip must be > 0"):
        value_loss(x, x, x, x, value_clip=-0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        explained_variance(x, x, torch.zeros(2))
