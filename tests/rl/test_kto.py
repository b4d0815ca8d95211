"""KTO (rl/kto.py) against a slow per-example loop and hand-computed values."""
import math

import pytest
import torch

from rlhf_ds.rl import kto_loss, kto_reference_point


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def loop_kto(policy, ref, desirable, z0, beta, wd, wu):
    losses = []
    for p, r, d in zip(policy.tolist(), ref.tolist(), desirable.tolist()):
        ratio = p - r
        losses.append(wd * (1 - sigmoid(beta * (ratio - z0))) if d else wu * (1 - sigmoid(beta * (z0 - ratio))))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("beta,wd,wu,z0", [(0.1, 1.0, 1.0, 0.0), (0.5, 1.0, 1.33, 0.7), (2.0, 0.5, 2.0, 3.0)])
def test_matches_loop(beta, wd, wu, z0):
    g = torch.Generator().manual_seed(0)
    policy, ref = -10 * torch.rand(9, generator=g), -10 * torch.rand(9, generator=g)
    desirable = torch.rand(9, generator=g) > 0.4
    loss, stats = kto_loss(policy, ref, desirable, torch.tensor(z0), beta, wd, wu)
    assert math.isclose(loss.item(), loop_kto(policy, ref, desirable, z0, beta, wd, wu), rel_tol=1e-5)
    r = beta * (policy - ref)
    assert math.isclose(stats["rewards_desirable_sum"].item(), float(r[desirable].sum()), rel_tol=1e-5)
    assert math.isclose(stats["rewards_undesirable_sum"].item(), float(r[~desirable].sum()), rel_tol=1e-5)
    assert stats["num_desirable"].item() == desirable.sum() and stats["num_undesirable"].item() == (~desirable).sum()


def test_hand_values():
    # desirable: r = -1 - (-2) = 1, z0 = 1 -> 1 - sigmoid(0) = 0.5, times lambda_D 2 = 1
    # undesirable: r = -4 - (-2) = -2, beta 0.5: 1 - sigmoid(0.5 (1 + 2)) = 1 - sigmoid(1.5) = 0.1824255
    loss, _ = kto_loss(torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -2.0]), torch.tensor([True, False]),
                       torch.tensor(1.0), beta=0.5, desirable_weight=2.0)
    assert math.isclose(loss.item(), (1.0 + 0.1824255) / 2, rel_tol=1e-6)


def test_reference_point_is_a_clamped_detached_mean():
    s = torch.tensor(3.0, requires_grad=True)
    z0 = kto_reference_point(s, 4)
    assert z0.item() == 0.75 and not z0.requires_grad
    assert kto_reference_point(torch.tensor(-3.0), 4).item() == 0.0   # KL >= 0: a negative estimate is noise


def test_gradient_by_hand_and_no_gradient_through_reference():
    # d/dp of lambda_D (1 - sigmoid(beta (r - z0))) = -lambda_D beta s (1 - s), s = sigmoid(beta (r - z0));
    # undesirable: + lambda_U beta s' (1 - s'), s' = sigmoid(beta (z0 - r)); divided by B
    policy = torch.tensor([-1.0, -4.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0], requires_grad=True)
    z0 = torch.tensor(0.5, requires_grad=True)
    loss, _ = kto_loss(policy, ref, torch.tensor([True, False]), z0, beta=0.5, desirable_weight=2.0,
                       undesirable_weight=3.0)
    (grad,) = torch.autograd.grad(loss, policy)
    s, s2 = sigmoid(0.5 * (1 - 0.5)), sigmoid(0.5 * (0.5 + 2))
    torch.testing.assert_close(grad, torch.tensor([-2.0 * 0.5 * s * (1 - s) / 2, 3.0 * 0.5 * s2 * (1 - s2) / 2]))
    loss, _ = kto_loss(policy.detach(), ref, torch.tensor([True, False]), z0)
    assert not loss.requires_grad


def test_global_count_and_bad_inputs():
    g = torch.Generator().manual_seed(1)
    policy, ref = -5 * torch.rand(6, generator=g), -5 * torch.rand(6, generator=g)
    desirable = torch.tensor([True, False, True, True, False, False])
    whole, _ = kto_loss(policy, ref, desirable, torch.tensor(0.2))
    halves = sum(kto_loss(policy[s], ref[s], desirable[s], torch.tensor(0.2), num_examples=6)[0]
                 for s in (slice(0, 4), slice(4, 6)))
    torch.testing.assert_close(halves, whole)
    with pytest.raises(ValueError, match="desirable must be a bool tensor"):
        kto_loss(policy, ref, desirable.long(), torch.tensor(0.0))
    with pytest.raises(ValueError, match="beta must be > 0"):
        kto_loss(policy, ref, desirable, torch.tensor(0.0), beta=0)
    with pytest.raises(ValueError, match="KTO weights must be >= 0"):
        kto_loss(policy, ref, desirable, torch.tensor(0.0), undesirable_weight=-1)
    with pytest.raises(ValueError, match="shape mismatch"):
        kto_loss(policy, ref[:3], desirable, torch.tensor(0.0))
