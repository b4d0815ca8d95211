"""Pairwise preference losses (rl/dpo.py) against a slow per-pair loop and hand-computed values."""
import math

import pytest
import torch

from rlhf_ds.rl import DPO_LOSS_TYPES, dpo_loss


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def loop_dpo(pc, pr, rc, rr, beta, loss_type, eps=0.0, gamma=0.0, lc=None, lr=None, normalize=False, alpha=0.0):
    """One pair at a time, in python floats, each formula written out from its paper."""
    losses, rewards_c, rewards_r, nlls = [], [], [], []
    for i in range(len(pc)):
        if loss_type == "simpo":        # reference-free, always per token
            sc, sr = float(pc[i]) / float(lc[i]), float(pr[i]) / float(lr[i])
        else:
            sc, sr = float(pc[i]) - float(rc[i]), float(pr[i]) - float(rr[i])
            if normalize:
                sc, sr = sc / float(lc[i]), sr / float(lr[i])
        h = sc - sr
        if loss_type == "sigmoid":
            loss = -log_sigmoid(beta * h)
        elif loss_type == "conservative":
            loss = -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
        elif loss_type == "robust":
            loss = ((1 - eps) * -log_sigmoid(beta * h) - eps * -log_sigmoid(-beta * h)) / (1 - 2 * eps)
        elif loss_type == "hinge":
            loss = max(0.0, 1 - beta * h)
        elif loss_type == "simpo":
            loss = -log_sigmoid(beta * h - gamma)
        else:  # ipo
            loss = (h - 1 / (2 * beta)) ** 2
        if alpha:
            nll = -float(pc[i]) / float(lc[i])
            nlls.append(nll)
            loss += alpha * nll
        losses.append(loss)
        rewards_c.append(beta * sc)
        rewards_r.append(beta * sr)
    n = len(pc)
    stats = {"rewards_chosen": sum(rewards_c) / n, "rewards_rejected": sum(rewards_r) / n,
             "reward_accuracy": sum(c > r for c, r in zip(rewards_c, rewards_r)) / n,
             "reward_margin": sum(c - r for c, r in zip(rewards_c, rewards_r)) / n}
    if alpha:
        stats["nll"] = sum(nlls) / n
    return sum(losses) / n, stats


def random_logps(seed, B=7):
    g = torch.Generator().manual_seed(seed)
    return [-10 * torch.rand(B, generator=g) - 1 for _ in range(4)]


def random_lengths(seed, B=7):
    g = torch.Generator().manual_seed(seed + 100)
    return [torch.randint(1, 20, (B,), generator=g) for _ in range(2)]


CASES = [  # loss_type, label smoothing, gamma, length_normalize, rpo alpha
    ("sigmoid", 0.0, 0.0, False, 0.0), ("ipo", 0.0, 0.0, False, 0.0), ("ipo", 0.0, 0.0, True, 0.0),
    ("conservative", 0.1, 0.0, False, 0.0), ("robust", 0.2, 0.0, False, 0.0), ("hinge", 0.0, 0.0, False, 0.0),
    ("simpo", 0.0, 0.5, True, 0.0), ("sigmoid", 0.0, 0.0, False, 0.7), ("simpo", 0.0, 0.3, True, 1.0),
]


@pytest.mark.parametrize("loss_type,eps,gamma,normalize,alpha", CASES)
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_matches_loop(loss_type, eps, gamma, normalize, alpha, beta):
    pc, pr, rc, rr = random_logps(0)
    lc, lr = random_lengths(0)
    ref = {} if loss_type == "simpo" else {"ref_chosen_logps": rc, "ref_rejected_logps": rr}
    loss, stats = dpo_loss(pc, pr, **ref, beta=beta, loss_type=loss_type, label_smoothing=eps, gamma=gamma,
                           length_normalize=normalize, chosen_lengths=lc, rejected_lengths=lr, rpo_alpha=alpha)
    want_loss, want_stats = loop_dpo(pc, pr, rc, rr, beta, loss_type, eps, gamma, lc, lr, normalize, alpha)
    assert math.isclose(loss.item(), want_loss, rel_tol=1e-5, abs_tol=1e-7)
    assert set(stats) == set(want_stats)
    for key, value in want_stats.items():
        assert math.isclose(stats[key].item(), value, rel_tol=1e-5, abs_tol=1e-6), key
    assert 0 < want_stats["reward_accuracy"] < 1


def test_hand_values():
    # log-ratios: chosen -1 - (-2) = 1, rejected -3 - (-2) = -1 -> h = 2; beta = 0.5, beta h = 1
    # sigmoid: -log sigmoid(1) = log(1 + e^-1) = 0.3132617
    # ipo: (h - 1 / (2 * 0.5))^2 = (2 - 1)^2 = 1
    # conservative eps 0.1: 0.9 * 0.3132617 + 0.1 * log(1 + e) = 0.2819355 + 0.1313262 = 0.4132617
    # robust eps 0.1: (0.9 * 0.3132617 - 0.1 * 1.3132617) / 0.8 = (0.2819355 - 0.1313262) / 0.8 = 0.1882617
    # hinge: max(0, 1 - 0.5 * 2) = 0; with beta 0.25: 1 - 0.5 = 0.5
    # rewards: chosen 0.5 * 1 = 0.5, rejected -0.5, margin 1, accuracy 1
    args = [torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])]
    loss, stats = dpo_loss(*args, beta=0.5)
    assert math.isclose(loss.item(), 0.3132617, rel_tol=1e-6)
    assert stats["rewards_chosen"].item() == 0.5 and stats["rewards_rejected"].item() == -0.5
    assert stats["reward_margin"].item() == 1.0 and stats["reward_accuracy"].item() == 1.0
    assert math.isclose(dpo_loss(*args, beta=0.5, loss_type="ipo")[0].item(), 1.0, rel_tol=1e-6)
    loss_c, _ = dpo_loss(*args, beta=0.5, loss_type="conservative", label_smoothing=0.1)
    assert math.isclose(loss_c.item(), 0.4132617, rel_tol=1e-6)
    loss_r, _ = dpo_loss(*args, beta=0.5, loss_type="robust", label_smoothing=0.1)
    assert math.isclose(loss_r.item(), 0.1882617, rel_tol=1e-6)
    assert dpo_loss(*args, beta=0.5, loss_type="hinge")[0].item() == 0.0
    assert math.isclose(dpo_loss(*args, beta=0.25, loss_type="hinge")[0].item(), 0.5, rel_tol=1e-6)


def test_hand_values_per_token_and_nll():
    chosen, rejected = torch.tensor([-1.0]), torch.tensor([-3.0])
    lengths = dict(chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([3]))
    # SimPO: per-token log-probs -1/2 and -3/3 -> h = 0.5; beta 2, gamma 0.5: -log sigmoid(1 - 0.5) = 0.4740770
    loss, stats = dpo_loss(chosen, rejected, beta=2.0, loss_type="simpo", gamma=0.5, **lengths)
    assert math.isclose(loss.item(), 0.4740770, rel_tol=1e-6)
    assert stats["rewards_chosen"].item() == -1.0 and stats["rewards_rejected"].item() == -2.0   # beta * log pi / |y|
    # IPO, length-normalised: log-ratios 1 / 2 and -1 / 4 -> h = 0.75; beta 0.5: (0.75 - 1)^2 = 0.0625
    refs = [torch.tensor([-2.0]), torch.tensor([-2.0])]
    loss, _ = dpo_loss(chosen, rejected, *refs, beta=0.5, loss_type="ipo", length_normalize=True,
                       chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4]))
    assert math.isclose(loss.item(), 0.0625, rel_tol=1e-6)
    # RPO: sigmoid 0.3132617 (as above) + 1.5 * (1 / 2) = 1.0632617
    loss, stats = dpo_loss(chosen, rejected, *refs, beta=0.5, rpo_alpha=1.5, **lengths)
    assert math.isclose(loss.item(), 1.0632617, rel_tol=1e-6)
    assert stats["nll"].item() == 0.5


def test_gradients_by_hand():
    # sigmoid: d/d pc of -log sigmoid(beta h) / B = -beta sigmoid(-beta h) / B, and the opposite for pr
    # ipo: d/d pc of (h - 1/(2 beta))^2 / B = 2 (h - 1/(2 beta)) / B
    # hinge: -beta / B where beta h < 1, else 0
    pc, pr, rc, rr = random_logps(1, B=4)
    beta = 0.3
    h = (pc - rc) - (pr - rr)
    for loss_type, want in (("sigmoid", -beta * torch.sigmoid(-beta * h) / 4),
                            ("ipo", 2 * (h - 1 / (2 * beta)) / 4),
                            ("hinge", torch.where(beta * h < 1, -beta / 4, 0.0))):
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


def test_global_pair_count():
    """Two halves with the global count sum to the whole batch's loss."""
    pc, pr, rc, rr = random_logps(3, B=6)
    lc, lr = random_lengths(3, B=6)
    kw = dict(beta=0.2, loss_type="ipo", length_normalize=True, rpo_alpha=0.3)
    whole, _ = dpo_loss(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **kw)
    halves = sum(dpo_loss(pc[s], pr[s], rc[s], rr[s], chosen_lengths=lc[s], rejected_lengths=lr[s], num_pairs=6,
                          **kw)[0] for s in (slice(0, 2), slice(2, 6)))
    torch.testing.assert_close(halves, whole)


def test_bad_inputs():
    x = torch.zeros(3)
    n = torch.ones(3, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown DPO loss_type 'kto'; allowed: sigmoid, ipo, conservative, robust, "
                                         "hinge, simpo"):
        dpo_loss(x, x, x, x, loss_type="kto")
    assert DPO_LOSS_TYPES == ("sigmoid", "ipo", "conservative", "robust", "hinge", "simpo")
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \(0, 0.5\)"):
        dpo_loss(x, x, x, x, loss_type="conservative")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \(0, 0.5\) for loss_type 'robust'"):
        dpo_loss(x, x, x, x, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type 'conservative' and 'robust' only"):
        dpo_loss(x, x, x, x, loss_type="sigmoid", label_smoothing=0.1)
    with pytest.raises(ValueError, match="gamma .* applies to loss_type 'simpo' only"):
        dpo_loss(x, x, x, x, gamma=0.5)
    with pytest.raises(ValueError, match="'simpo' is reference-free"):
        dpo_loss(x, x, x, x, loss_type="simpo", chosen_lengths=n, rejected_lengths=n)
    with pytest.raises(ValueError, match="'sigmoid' needs the reference log-probs"):
        dpo_loss(x, x)
    with pytest.raises(ValueError, match="length normalisation needs chosen_lengths"):
        dpo_loss(x, x, loss_type="simpo")
    with pytest.raises(ValueError, match="length normalisation needs chosen_lengths"):
        dpo_loss(x, x, x, x, rpo_alpha=1.0)
    with pytest.raises(ValueError, match=r"shape mismatch: .*ref_rejected_logps \(2,\)"):
        dpo_loss(x, x, x, torch.zeros(2))
    with pytest.raises(ValueError, match=r"policy_chosen_logps must be \(B,\)"):
        dpo_loss(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1))
