import math

import pytest
import torch

from rlhf_ds.rl import KL_ESTIMATORS, kl_shaped_rewards, last_action_index, per_token_kl


def loop_kl(logprobs, ref_logprobs, mask, estimator):
    B, T = logprobs.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            r = float(logprobs[b, t]) - float(ref_logprobs[b, t])
            out[b, t] = {"k1": r, "k2": r * r / 2, "k3": math.exp(-r) - 1 + r}[estimator]
    return out


def loop_last_index(mask):
    out = []
    for row in mask.tolist():
        last = -1
        for t, m in enumerate(row):
            if m:
                last = t
        out.append(last)
    return torch.tensor(out)


def loop_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator):
    kl = loop_kl(logprobs, ref_logprobs, mask, estimator)
    rewards = -kl_coef * kl
    for b, last in enumerate(loop_last_index(mask).tolist()):
        if last >= 0:
            rewards[b, last] += float(scores[b])
    return rewards, kl


def random_inputs(seed=0, B=4, T=6):
    g = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(B, T, generator=g) * 3
    ref_logprobs = -torch.rand(B, T, generator=g) * 3
    mask = torch.ones(B, T)
    mask[0, 4:] = 0          # trailing padding
    mask[1, 2] = 0           # hole in the middle
    mask[2] = 0              # empty row
    return logprobs, ref_logprobs, mask


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_per_token_kl_matches_loop(estimator):
    logprobs, ref_logprobs, mask = random_inputs()
    got = per_token_kl(logprobs, ref_logprobs, mask, estimator)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), loop_kl(logprobs, ref_logprobs, mask, estimator),
                               atol=1e-6, rtol=1e-5)
    assert (got[mask == 0] == 0).all()  # exact zeros, not merely small
    if estimator in ("k2", "k3"):
        assert (got >= 0).all()


def test_per_token_kl_hand_values():
    # log r = logprobs - ref = [1, -1, 0]
    # k1 = [1, -1, 0]; k2 = r^2 / 2 = [0.5, 0.5, 0]
    # k3 = e^{-r} - 1 + r = [e^-1 = 0.3678794, e - 2 = 0.7182818, 0]
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-2.0, -1.0, -0.5]])
    mask = torch.ones(1, 3)
    torch.testing.assert_close(per_token_kl(logprobs, ref, mask, "k1"), torch.tensor([[1.0, -1.0, 0.0]]))
    torch.testing.assert_close(per_token_kl(logprobs, ref, mask, "k2"), torch.tensor([[0.5, 0.5, 0.0]]))
    torch.testing.assert_close(per_token_kl(logprobs, ref, mask, "k3"),
                               torch.tensor([[0.3678794, 0.7182818, 0.0]]))


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_garbage_on_masked_positions_gives_zero_and_finite_gradients(estimator):
    logprobs = torch.tensor([[-1.0, -float("inf"), float("nan")]], requires_grad=True)
    ref = torch.tensor([[-2.0, -float("inf"), 3.0]])
    mask = torch.tensor([[1, 0, 0]])
    kl = per_token_kl(logprobs, ref, mask, estimator)
    assert kl[0, 1] == 0 and kl[0, 2] == 0
    kl.sum().backward()
    assert torch.isfinite(logprobs.grad).all()
    assert (logprobs.grad[0, 1:] == 0).all()


def test_k3_is_finite_for_extreme_log_ratios():
    # log r clamped to +-20: k3(20) = e^-20 - 1 + 20 = 19.0000000021, k3(-20) = e^20 - 21.
    kl = per_token_kl(torch.tensor([[30.0, -30.0]]), torch.zeros(1, 2), torch.ones(1, 2), "k3")
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(kl, torch.tensor([[19.0, math.exp(20) - 21]]))


def test_last_action_index():
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]])
    torch.testing.assert_close(last_action_index(mask), torch.tensor([2, -1, 3, 1]))
    g = torch.Generator().manual_seed(3)
    random_mask = torch.rand(7, 9, generator=g) > 0.6
    torch.testing.assert_close(last_action_index(random_mask), loop_last_index(random_mask))
    torch.testing.assert_close(last_action_index(torch.zeros(2, 0)), torch.tensor([-1, -1]))


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_kl_shaped_rewards_matches_loop(estimator):
    logprobs, ref_logprobs, mask = random_inputs(seed=5)
    scores = torch.tensor([1.5, -2.0, 7.0, 0.25])
    rewards, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, 0.1, estimator)
    want_rewards, want_kl = loop_shaped_rewards(scores, logprobs, ref_logprobs, mask, 0.1, estimator)
    torch.testing.assert_close(rewards.double(), want_rewards, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(kl.double(), want_kl, atol=1e-6, rtol=1e-5)
    assert (rewards[2] == 0).all()  # the empty row gets neither KL nor score
    assert (rewards[mask == 0] == 0).all()


def test_kl_shaped_rewards_hand_values():
    # k1 KL = [1, -1, 0(masked), 0(masked)]; rewards = -0.1 * KL = [-0.1, 0.1, 0, 0];
    # the score 2 lands on the last response token (t=1): [-0.1, 2.1, 0, 0].
    # Row 2 has a hole: mask [1, 0, 1, 0], KL = [0.5, 0, 0.5, 0] -> the score 3 goes to t=2:
    # [-0.05, 0, -0.05 + 3 = 2.95, 0].
    scores = torch.tensor([2.0, 3.0])
    logprobs = torch.tensor([[-1.0, -2.0, -1.0, -1.0], [-1.0, -9.0, -1.0, -9.0]])
    ref = torch.tensor([[-2.0, -1.0, -5.0, -5.0], [-1.5, -1.0, -1.5, -1.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]])
    rewards, kl = kl_shaped_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 2.1, 0.0, 0.0], [-0.05, 0.0, 2.95, 0.0]]))
    torch.testing.assert_close(kl, torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]]))


def test_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'; allowed: k1, k2, k3"):
        per_token_kl(x, x, torch.ones(2, 3), "k4")
    with pytest.raises(ValueError, match=r"shape mismatch: .*action_mask \(2, 1\)"):
        per_token_kl(x, x, torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"scores must be \(B,\) = \(2,\), got \(2, 1\)"):
        kl_shaped_rewards(torch.zeros(2, 1), x, x, torch.ones(2, 3), 0.1)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_shaped_rewards(torch.zeros(2), x, x, torch.ones(2, 3), 0.1, estimator="kl")
