"""The advantage-estimator registry against slow loops written here and hand-computed values: groups
of one, constant groups, odd group sizes, masks with holes and trailing padding."""
import inspect
import math

import pytest
import torch

from rlhf_ds.rl import gae, masked_whiten
from rlhf_ds.rl.advantages import ADVANTAGE_ESTIMATORS, advantage_estimator


def _estimate(name, rewards, mask, **kw):
    return ADVANTAGE_ESTIMATORS[name].fn(rewards, mask, **kw)


# ---------------------------------------------------------------------------- slow references

def loop_returns(rewards, mask):
    return [sum(float(rewards[b, t]) for t in range(rewards.shape[1]) if mask[b, t]) for b in range(len(rewards))]


def loop_group(rewards, mask, G, kind):
    """Per-row advantage of the group estimators, broadcast over the row's counted tokens."""
    R = loop_returns(rewards, mask)
    per_row = []
    for start in range(0, len(R), G):
        group = R[start:start + G]
        mean = sum(group) / G
        for i, x in enumerate(group):
            if kind == "grpo":
                std = math.sqrt(sum((y - mean) ** 2 for y in group) / (G - 1)) if G > 1 else 0.0
                per_row.append((x - mean) / (std + 1e-6) if G > 1 else 0.0)
            elif kind == "dr_grpo":
                per_row.append(x - mean)
            else:   # rloo
                others = [y for j, y in enumerate(group) if j != i]
                per_row.append(x - sum(others) / len(others))
    out = torch.zeros(rewards.shape, dtype=torch.float64)
    for b, a in enumerate(per_row):
        for t in range(rewards.shape[1]):
            if mask[b, t]:
                out[b, t] = a
    return out


def loop_discounted(rewards, mask, gamma):
    """G_t = r_t + gamma G_next over the counted tokens, walking each row backwards (holes skipped)."""
    out = torch.zeros(rewards.shape, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        g = 0.0
        for t in reversed(range(rewards.shape[1])):
            if mask[b, t]:
                g = float(rewards[b, t]) + gamma * g
                out[b, t] = g
    return out


def loop_whiten(x, mask):
    vals = [float(x[b, t]) for b in range(x.shape[0]) for t in range(x.shape[1]) if mask[b, t]]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if mask[b, t]:
                out[b, t] = (float(x[b, t]) - mean) / math.sqrt(var + 1e-8)
    return out


def loop_baseline(rewards, mask, G, gamma):
    R = loop_returns(rewards, mask)
    shifted = rewards.clone().double()
    for start in range(0, len(R), G):
        b = sum(R[start:start + G]) / G
        for row in range(start, start + G):
            last = max((t for t in range(rewards.shape[1]) if mask[row, t]), default=None)
            if last is not None:
                shifted[row, last] -= b
    return loop_whiten(loop_discounted(shifted, mask, gamma), mask)


def _batch(B, T, seed):
    """Token rewards (a score at each row's last token plus per-token noise, as KL-in-reward gives) and a
    mask with trailing padding, a hole, leading positions and a one-token row."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g) * 0.1
    mask = torch.ones(B, T, dtype=torch.long)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    for b in range(B):
        mask[b, lengths[b]:] = 0
    mask[0, 1] = 0 if T > 2 and lengths[0] > 2 else mask[0, 1]
    mask[1 % B, :] = 0
    mask[1 % B, 0] = 1                      # a response of one token
    rewards = rewards * mask
    return rewards, mask


# ---------------------------------------------------------------------------- against the loops

@pytest.mark.parametrize("kind, G", [(k, g) for k in ("grpo", "dr_grpo", "rloo") for g in (1, 2, 3, 5)
                                      if (k, g) != ("rloo", 1)])     # rloo needs two samples (test_bad_groups)
def test_group_estimators_match_loops(kind, G):
    rewards, mask = _batch(4 * G, 7, seed=G)
    adv, returns = _estimate(kind, rewards, mask, group_size=G)
    assert returns is None and adv.dtype == torch.float32
    torch.testing.assert_close(adv.double(), loop_group(rewards, mask, G, kind), atol=1e-5, rtol=1e-5)
    assert (adv[mask == 0] == 0).all()


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("G", [1, 3, 4])
def test_reinforce_pp_and_baseline_match_loops(gamma, G):
    rewards, mask = _batch(3 * G, 6, seed=10 + G)
    adv, returns = _estimate("reinforce_pp", rewards, mask, gamma=gamma)
    assert returns is None
    torch.testing.assert_close(adv.double(), loop_whiten(loop_discounted(rewards, mask, gamma), mask),
                               atol=1e-4, rtol=1e-4)
    adv, _ = _estimate("reinforce_pp_baseline", rewards, mask, group_size=G, gamma=gamma)
    torch.testing.assert_close(adv.double(), loop_baseline(rewards, mask, G, gamma), atol=1e-4, rtol=1e-4)
    assert (adv[mask == 0] == 0).all()


def test_gae_is_the_scan_then_whitening():
    rewards, mask = _batch(5, 8, seed=3)
    values = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))
    adv, returns = _estimate("gae", rewards, mask, values=values, gamma=0.99, lam=0.95)
    want_adv, want_ret = gae(rewards, values, mask, 0.99, 0.95)
    torch.testing.assert_close(returns, want_ret)
    torch.testing.assert_close(adv, masked_whiten(want_adv, mask))
    raw, _ = _estimate("gae", rewards, mask, values=values, gamma=0.99, lam=0.95, whiten=None)
    torch.testing.assert_close(raw, want_adv)
    with pytest.raises(ValueError, match="needs critic values"):
        _estimate("gae", rewards, mask)


# ---------------------------------------------------------------------------- by hand

def _scores_at_end(scores, length):
    """Rows whose only reward is the score at token `length - 1`, mask 1 up to there."""
    rewards = torch.zeros(len(scores), length)
    rewards[:, -1] = torch.tensor(scores, dtype=torch.float32)
    return rewards, torch.ones(len(scores), length, dtype=torch.long)


def test_group_hand_values_with_a_constant_group_and_an_odd_size():
    # groups of 3: [1, 2, 3] mean 2, std 1 -> GRPO [-1, 0, 1]; Dr. GRPO the same; RLOO [-1.5, 0, 1.5]
    #              [5, 5, 5] constant -> 0 for all three
    #              [0, 0, 6] mean 2, std sqrt(12) -> GRPO [-0.5773503, -0.5773503, 1.1547005];
    #                        Dr. GRPO [-2, -2, 4]; RLOO [0 - 3, 0 - 3, 6 - 0] = [-3, -3, 6]
    rewards, mask = _scores_at_end([1, 2, 3, 5, 5, 5, 0, 0, 6], 2)
    want = {"grpo": [-1, 0, 1, 0, 0, 0, -0.5773503, -0.5773503, 1.1547005],
            "dr_grpo": [-1, 0, 1, 0, 0, 0, -2, -2, 4],
            "rloo": [-1.5, 0, 1.5, 0, 0, 0, -3, -3, 6]}
    for kind, values in want.items():
        adv, _ = _estimate(kind, rewards, mask, group_size=3)
        want = torch.tensor(values, dtype=torch.float32).unsqueeze(1).expand(9, 2)
        torch.testing.assert_close(adv, want, atol=2e-6, rtol=1e-5)


def test_group_return_sums_the_kl_penalty_with_the_score():
    # Row 0: score 1 with -0.25 on each of 2 tokens -> R = 0.5; row 1: score 0, no penalty -> R = 0.
    # Dr. GRPO: mean 0.25 -> [0.25, -0.25]; row 1's padding keeps 0.
    rewards = torch.tensor([[-0.25, 0.75], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv, _ = _estimate("dr_grpo", rewards, mask, group_size=2)
    torch.testing.assert_close(adv, torch.tensor([[0.25, 0.25], [-0.25, 0.0]]))


def test_reinforce_pp_hand_values():
    # r = [0, 0, 1] with gamma 0.5 -> G = [0.25, 0.5, 1]; r = [2, 0] (one pad) -> G = [2, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    raw, _ = _estimate("reinforce_pp", rewards, mask, gamma=0.5, whiten=None)
    torch.testing.assert_close(raw, torch.tensor([[0.25, 0.5, 1.0], [2.0, 0.0, 0.0]]))
    # whitened over the 5 counted values [0.25, 0.5, 1, 2, 0]: mean 0.75, unbiased var 0.625
    adv, _ = _estimate("reinforce_pp", rewards, mask, gamma=0.5)
    want = (torch.tensor([[0.25, 0.5, 1.0], [2.0, 0.0, 0.0]]) - 0.75) / math.sqrt(0.625 + 1e-8)
    torch.testing.assert_close(adv, want * mask)


def test_reinforce_pp_baseline_hand_values():
    # One group of 2: R = [1, 3], baseline 2; gamma 1 -> returns [-1, -1] and [1, 1];
    # whitened over 4 values: mean 0, unbiased var 4/3 -> -+0.8660254.
    rewards = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    adv, _ = _estimate("reinforce_pp_baseline", rewards, torch.ones(2, 2), group_size=2)
    torch.testing.assert_close(adv, torch.tensor([[-0.8660254, -0.8660254], [0.8660254, 0.8660254]]))


# ---------------------------------------------------------------------------- the registry

def test_one_signature_and_what_each_needs():
    params = {name: list(inspect.signature(e.fn).parameters) for name, e in ADVANTAGE_ESTIMATORS.items()}
    assert len({tuple(p) for p in params.values()}) == 1, params
    assert sorted(ADVANTAGE_ESTIMATORS) == sorted(["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp",
                                                   "reinforce_pp_baseline"])
    assert [n for n, e in ADVANTAGE_ESTIMATORS.items() if e.needs_critic] == ["gae"]
    for e in ADVANTAGE_ESTIMATORS.values():
        assert "Source" in e.fn.__doc__ or "et al." in e.fn.__doc__ or "Hu 2025" in e.fn.__doc__, e.name
    with pytest.raises(ValueError, match="allowed: gae, grpo"):
        advantage_estimator("ppo")


def test_bad_groups():
    rewards, mask = _scores_at_end([1, 2, 3], 2)
    with pytest.raises(ValueError, match="B=3 is not divisible by group_size G=2"):
        _estimate("grpo", rewards, mask, group_size=2)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        _estimate("rloo", rewards, mask, group_size=1)
    with pytest.raises(ValueError, match=r"rewards must be \(B, T\)"):
        _estimate("grpo", torch.zeros(4), torch.ones(4), group_size=2)
