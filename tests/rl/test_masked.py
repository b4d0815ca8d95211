import math

import pytest
import torch

from rlhf_ds.rl import masked_mean, masked_sum, masked_var, masked_whiten


def selected(x, mask):
    return [float(v) for v, m in zip(x.flatten().tolist(), mask.flatten().tolist()) if m]


def loop_mean(values):
    return sum(values) / len(values) if values else 0.0


def loop_var(values, unbiased):
    m = loop_mean(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - (1 if unbiased else 0))


def random_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, generator=g) * 3 + 1
    mask = (torch.rand(4, 6, generator=g) > 0.4).long()
    mask[2] = 0  # an empty row
    return x, mask


def test_masked_sum_and_mean_match_loop():
    x, mask = random_case()
    vals = selected(x, mask)
    assert math.isclose(float(masked_sum(x, mask)), sum(vals), rel_tol=1e-5)
    assert math.isclose(float(masked_mean(x, mask)), loop_mean(vals), rel_tol=1e-5)
    rows = [loop_mean(selected(x[b], mask[b])) for b in range(4)]
    torch.testing.assert_close(masked_mean(x, mask, dim=1).double(), torch.tensor(rows, dtype=torch.float64))
    cols = [sum(selected(x[:, t], mask[:, t])) for t in range(6)]
    torch.testing.assert_close(masked_sum(x, mask, dim=0).double(), torch.tensor(cols, dtype=torch.float64))


def test_hand_values():
    # selected: 1, 3, 5 (the 100 and the NaN are masked out)
    # sum = 9, mean = 3, unbiased var = ((1-3)^2 + 0 + (5-3)^2) / 2 = 4, biased var = 8/3
    # whitened: (x - 3) / sqrt(4) = [-1, 0, 1]
    x = torch.tensor([[1.0, 100.0, 3.0], [float("nan"), 5.0, 0.0]])
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]])
    assert masked_sum(x, mask).item() == 9.0
    assert masked_mean(x, mask).item() == 3.0
    assert masked_var(x, mask).item() == 4.0
    assert math.isclose(masked_var(x, mask, unbiased=False).item(), 8 / 3, rel_tol=1e-6)
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    # shift_mean=False keeps the mean 3: [2, 3, 4]
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False),
                               torch.tensor([[2.0, 0.0, 3.0], [0.0, 4.0, 0.0]]))
    # per-row mean with an empty row: [2, 5, 0]
    x2 = torch.tensor([[1.0, 3.0], [5.0, 7.0], [9.0, 9.0]])
    torch.testing.assert_close(masked_mean(x2, torch.tensor([[1, 1], [1, 0], [0, 0]]), dim=1),
                               torch.tensor([2.0, 5.0, 0.0]))


@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_matches_loop(unbiased):
    x, mask = random_case(1)
    want = loop_var(selected(x, mask), unbiased)
    assert math.isclose(float(masked_var(x, mask, unbiased=unbiased)), want, rel_tol=1e-5)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_loop(shift_mean):
    x, mask = random_case(2)
    vals = selected(x, mask)
    m, s = loop_mean(vals), math.sqrt(loop_var(vals, True) + 1e-8)
    want = torch.zeros(4, 6, dtype=torch.float64)
    for b in range(4):
        for t in range(6):
            if mask[b, t]:
                want[b, t] = (float(x[b, t]) - m) / s + (0.0 if shift_mean else m)
    got = masked_whiten(x, mask, shift_mean=shift_mean)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    w = selected(got, mask)
    assert math.isclose(loop_mean(w), 0.0 if shift_mean else m, abs_tol=1e-5)
    assert math.isclose(loop_var(w, True), 1.0, rel_tol=1e-5)


def test_bf16_accumulates_in_fp32():
    # 4096 entries of 1 + 1/128 (exact in bf16): the sum comes back in fp32, 4096 * 1.0078125 = 4128.
    x = torch.full((1, 4096), 1.0 + 1 / 128).bfloat16()
    total = masked_sum(x, torch.ones(1, 4096))
    assert total.dtype == torch.float32
    assert total.item() == 4128.0


def test_gradient_flows_only_through_selected_entries():
    x = torch.tensor([1.0, float("inf"), 3.0], requires_grad=True)
    masked_mean(x, torch.tensor([1, 0, 1])).backward()
    assert x.grad.tolist() == [0.5, 0.0, 0.5]


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"shape mismatch: x \(2, 3\), mask \(2, 1\)"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 1))
    with pytest.raises(ValueError, match="at least 2 masked entries"):
        masked_var(torch.zeros(2, 3), torch.tensor([[0, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="at least 1 masked entries"):
        masked_var(torch.zeros(2, 3), torch.zeros(2, 3), unbiased=False)
    with pytest.raises(ValueError, match="at least 2 masked entries"):
        masked_whiten(torch.zeros(1, 3), torch.tensor([[0, 1, 0]]))
