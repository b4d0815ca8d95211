import math

import pytest
import torch

from rlhf_ds.rl import DPO_LOSS_TYPES, dpo_loss


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def loop_dpo(pc, pr, rc, rr, beta, loss_type, eps=0.0):
    losses, rewards_c, rewards_r = [], [], []
    for i in range(len(pc)):
        h = (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))
        if loss_type == "sigmoid":
            losses.append(-log_sigmoid(beta * h))
        elif loss_type == "conservative":
            losses.append(-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h))
        else:  # ipo
            losses.append((h - 1 / (2 * beta)) ** 2)
        rewards_c.append(beta * (float(pc[i]) - float(rc[i])))
        rewards_r.append(beta * (float(pr[i]) - float(rr[i])))
    n = len(pc)
    stats = {"rewards_chosen": sum(rewards_c) / n, "rewards_rejected": sum(rewards_r) / n,
             "reward_accuracy": sum(c > r for c, r in zip(rewards_c, rewards_r)) / n,
             "reward_margin": sum(c - r for c, r in zip(rewards_c, rewards_r)) / n}
    return sum(losses) / n, stats


def random_logps(seed, B=7):
    g = torch.Generator().manual_seed(seed)
    return [-10 * torch.rand(B, generator=g) - 1 for _ in range(4)]


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("ipo", 0.0), ("conservative", 0.1)])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_matches_loop(loss_type, eps, beta):
    pc, pr, rc, rr = random_logps(0)
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    want_loss, want_stats = loop_dpo(pc, pr, rc, rr, beta, loss_type, eps)
    assert math.isclose(loss.item(), want_loss, rel_tol=1e-5)
    assert set(stats) == set(want_stats)
    for key, value in want_stats.items():
        assert math.isclose(stats[key].item(), value, rel_tol=1e-5, abs_tol=1e-6), key
    assert 0 < want_stats["reward_accuracy"] < 1


def test_hand_values():
    # log-ratios: chosen -1 - (-2) = 1, rejected -3 - (-2) = -1 -> h = 2; beta = 0.5, beta h = 1
    # sigmoid: -log sigmoid(1) = log(1 + e^-1) = 0.3132617
    # ipo: (h - 1 / (2 * 0.5))^2 = (2 - 1)^2 = 1
    # conservative eps 0.1: 0.9 * 0.3132617 + 0.1 * log(1 + e) = 0.2819355 + 0.1313262 = 0.4132617
    # rewards: chosen 0.5 * 1 = 0.5, rejected -0.5, margin 1, accuracy 1
    args = [torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])]
    loss, stats = dpo_loss(*args, beta=0.5)
    assert math.isclose(loss.item(), 0.3132617, rel_tol=1e-6)
    assert stats["rewards_chosen"].item() == 0.5 and stats["rewards_rejected"].item() == -0.5
    assert stats["reward_margin"].item() == 1.0 and stats["reward_accuracy"].item() == 1.0
    assert math.isclose(dpo_loss(*args, beta=0.5, loss_type="ipo")[0].item(), 1.0, rel_tol=1e-6)
    loss_c, _ = dpo_loss(*args, beta=0.5, loss_type="conservative", label_smoothing=0.1)
    assert math.isclose(loss_c.item(), 0.4132617, rel_tol=1e-6)


def test_gradients_by_hand():
    # sigmoid: d/d pc of -log sigmoid(beta h) / B = -beta sigmoid(-beta h) / B, and the opposite for pr
    # ipo: d/d pc of (h - 1/(2 beta))^2 / B = 2 (h - 1/(2 beta)) / B
    pc, pr, rc, rr = random_logps(1, B=4)
    beta = 0.3
    h = (pc - rc) - (pr - rr)
    for loss_type, want in (("sigmoid", -beta * torch.sigmoid(-beta * h) / 4),
                            ("ipo", 2 * (h - 1 / (2 * beta)) / 4)):
        pc_ = pc.clone().requires_grad_(True)
        pr_ = pr.clone().requires_grad_(True)
        loss, _ = dpo_loss(pc_, pr_, rc, rr, beta=beta, loss_type=loss_type)
        grad_c, grad_r = torch.autograd.grad(loss, (pc_, pr_))
        torch.testing.assert_close(grad_c, want)
        torch.testing.assert_close(grad_r, -want)


def test_reference_gets_no_gradient():
    pc, pr, rc, rr = random_logps(2)
    rc.requires_grad_(True)
    rr.requires_grad_(True)
    loss, _ = dpo_loss(pc, pr, rc, rr)
    assert not loss.requires_grad


def test_bad_inputs():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="unknown DPO loss_type 'hinge'; allowed: sigmoid, ipo, conservative"):
        dpo_loss(x, x, x, x, loss_type="hinge")
    assert DPO_LOSS_TYPES == ("sigmoid", "ipo", "conservative")
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \(0, 0.5\)"):
        dpo_loss(x, x, x, x, loss_type="conservative")
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type 'conservative' only"):
        dpo_loss(x, x, x, x, loss_type="sigmoid", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"shape mismatch: .*ref_rejected_logps \(2,\)"):
        dpo_loss(x, x, x, torch.zeros(2))
    with pytest.raises(ValueError, match=r"policy_chosen_logps must be \(B,\)"):
        dpo_loss(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1))
