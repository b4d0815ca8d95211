import pytest
import torch

from rlhf_ds.rl import gae


def loop_gae(rewards, values, mask, gamma, lam):
    """Compress each row to its response tokens, run textbook GAE on the list, scatter back."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    ret = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        r = [float(rewards[b, t]) for t in idx]
        v = [float(values[b, t]) for t in idx]
        a_next, n = 0.0, len(idx)
        for k in reversed(range(n)):
            v_next = v[k + 1] if k + 1 < n else 0.0
            a_next = r[k] + gamma * v_next - v[k] + gamma * lam * a_next
            adv[b, idx[k]] = a_next
            ret[b, idx[k]] = a_next + v[k]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.0, 0.5)])
def test_matches_loop_with_padding_and_holes(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 8
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 5:] = 0               # trailing padding
    mask[1, 2:4] = 0              # hole in the middle (e.g. tool output)
    mask[2] = 0                   # empty row
    mask[3, :3] = 0               # leading prompt positions
    mask[3, 6] = 0                # ... and a hole
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = loop_gae(rewards, values, mask, gamma, lam)
    assert adv.dtype == ret.dtype == torch.float32
    torch.testing.assert_close(adv.double(), want_adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret.double(), want_ret, atol=1e-5, rtol=1e-5)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_hand_values_full_trailing_padding_and_hole():
    # gamma = 0.9, lam = 0.8, gamma * lam = 0.72
    # Row 0, full mask, r = [0, 0, 1], V = [0.5, 0.4, 0.3]:
    #   t=2: delta = 1 - 0.3 = 0.7                     A = 0.7
    #   t=1: delta = 0.9*0.3 - 0.4 = -0.13             A = -0.13 + 0.72*0.7   = 0.374
    #   t=0: delta = 0.9*0.4 - 0.5 = -0.14             A = -0.14 + 0.72*0.374 = 0.12928
    #   returns = A + V = [0.62928, 0.774, 1.0]
    # Row 1, hole at t=1 (its r=50, V=100 are ignored):
    #   t=2: A = 0.7; t=0: delta = 0.9*0.3 - 0.5 = -0.23, A = -0.23 + 0.72*0.7 = 0.274
    #   returns = [0.774, 0, 1.0]
    # Row 2, trailing padding at t=2, r = [0, 1, 99], V = [0.5, 0.4, 99]:
    #   t=1: delta = 1 - 0.4 = 0.6, A = 0.6; t=0: delta = -0.14, A = -0.14 + 0.72*0.6 = 0.292
    #   returns = [0.792, 1.0, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 50.0, 1.0], [0.0, 1.0, 99.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.5, 100.0, 0.3], [0.5, 0.4, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.12928, 0.374, 0.7], [0.274, 0.0, 0.7],
                                                  [0.292, 0.6, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.62928, 0.774, 1.0], [0.774, 0.0, 1.0],
                                                  [0.792, 1.0, 0.0]]))


def test_gamma_lam_one_is_monte_carlo_return_minus_value():
    # With gamma = lam = 1, A_t = sum_{k >= t} r_k - V_t and the return is the reward-to-go.
    # r = [1, 2, 3], V = [1, 1, 1]: reward-to-go = [6, 5, 3], A = [5, 4, 2].
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.ones(1, 3)
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[5.0, 4.0, 2.0]]))
    torch.testing.assert_close(ret, torch.tensor([[6.0, 5.0, 3.0]]))


def test_single_token():
    # T = 1: A = r - V, return = r.  r = [2, -1], V = [0.5, 0.25] -> A = [1.5, -1.25].
    adv, ret = gae(torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [0.25]]),
                   torch.ones(2, 1), gamma=0.99, lam=0.95)
    torch.testing.assert_close(adv, torch.tensor([[1.5], [-1.25]]))
    torch.testing.assert_close(ret, torch.tensor([[2.0], [-1.0]]))


def test_lam_zero_is_one_step_td():
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    adv, _ = gae(rewards, values, torch.ones(2, 4), gamma=0.5, lam=0.0)
    next_values = torch.cat([values[:, 1:], torch.zeros(2, 1)], dim=1)
    torch.testing.assert_close(adv, rewards + 0.5 * next_values - values)


def test_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="gamma and lam must be in"):
        gae(x, x, x, gamma=1.1, lam=0.9)
    with pytest.raises(ValueError, match="gamma and lam must be in"):
        gae(x, x, x, gamma=0.9, lam=-0.1)
    with pytest.raises(ValueError, match=r"shape mismatch: .*values \(2, 1\)"):
        gae(x, torch.zeros(2, 1), x, gamma=0.9, lam=0.9)
    with pytest.raises(ValueError, match=r"rewards must be \(B, T\)"):
        gae(torch.zeros(3), torch.zeros(3), torch.zeros(3), gamma=0.9, lam=0.9)
