import math

import pytest
import torch

from rlhf_ds.rl import grpo_advantages, rloo_advantages


def loop_grpo(scores, G, scale_by_std=True, eps=1e-6):
    r = [float(x) for x in scores]
    out = []
    for start in range(0, len(r), G):
        group = r[start:start + G]
        mean = sum(group) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (G - 1))
        out += [(x - mean) / (std + eps) if scale_by_std else x - mean for x in group]
    return torch.tensor(out, dtype=torch.float64)


def loop_rloo(scores, G):
    r = [float(x) for x in scores]
    out = []
    for start in range(0, len(r), G):
        group = r[start:start + G]
        for i, x in enumerate(group):
            others = [y for j, y in enumerate(group) if j != i]
            out.append(x - sum(others) / len(others))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("G", [2, 3, 8])
def test_match_loops(G):
    g = torch.Generator().manual_seed(G)
    scores = torch.randn(4 * G, generator=g)
    for scale in (True, False):
        torch.testing.assert_close(grpo_advantages(scores, G, scale_by_std=scale).double(),
                                   loop_grpo(scores, G, scale), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rloo_advantages(scores, G).double(), loop_rloo(scores, G), atol=1e-6, rtol=1e-5)


def test_hand_values():
    # group [1, 2, 3]: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> GRPO [-1, 0, 1]
    # group [5, 5, 5]: std 0 -> [0, 0, 0] (eps keeps it finite)
    # group [0, 0, 6]: mean 2, std sqrt((4 + 4 + 16) / 2) = sqrt(12) = 3.4641016
    #                  -> [-0.5773503, -0.5773503, 1.1547005]; Dr. GRPO [-2, -2, 4]
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 0.0, 6.0])
    torch.testing.assert_close(grpo_advantages(scores, 3),
                               torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, -0.5773503, -0.5773503, 1.1547005]))
    torch.testing.assert_close(grpo_advantages(scores, 3, scale_by_std=False),
                               torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, -2.0, -2.0, 4.0]))
    # RLOO [1, 2, 3]: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5
    # RLOO [0, 0, 6]: 0 - 3 = -3, -3, 6 - 0 = 6
    torch.testing.assert_close(rloo_advantages(scores, 3),
                               torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0, -3.0, -3.0, 6.0]))


def test_rloo_is_rescaled_mean_centring():
    # r_i - mean_{j!=i} r_j = G/(G-1) * (r_i - mean_j r_j): a known identity, checked independently
    scores = torch.randn(12, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(rloo_advantages(scores, 4), 4 / 3 * grpo_advantages(scores, 4, scale_by_std=False))


def test_bad_inputs():
    with pytest.raises(ValueError, match="B=7 is not divisible by group_size G=2"):
        grpo_advantages(torch.zeros(7), 2)
    with pytest.raises(ValueError, match="B=10 is not divisible by group_size G=4"):
        rloo_advantages(torch.zeros(10), 4)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match=r"scores must be \(B,\)"):
        grpo_advantages(torch.zeros(4, 2), 2)
