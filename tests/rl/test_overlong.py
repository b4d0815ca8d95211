import pytest
import torch

from rlhf_ds.rl.overlong import overlong_penalty


def test_hand_values():
    # L_max 10, buffer 4: no penalty up to 6 tokens, then -(|y| - 6) / 4, -1 at 10 (Yu et al. 2025, eq. 13)
    lengths = torch.tensor([1, 6, 7, 8, 10])
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4), torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0]))
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4, scale=2.0), torch.tensor([0.0, 0.0, -0.5, -1.0, -2.0]))


def test_matches_the_formula_written_out():
    for n in range(0, 13):
        want = 0.0 if n <= 8 else ((8 - n) / 4 if n <= 12 else -1.0)
        assert overlong_penalty(torch.tensor([n]), 12, 4).item() == pytest.approx(want)


def test_bad_inputs():
    with pytest.raises(ValueError, match="buffer must be in"):
        overlong_penalty(torch.tensor([3]), 10, 0)
    with pytest.raises(ValueError, match=r"lengths must be \(B,\)"):
        overlong_penalty(torch.ones(2, 2), 10, 2)
