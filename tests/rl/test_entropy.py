import math

import pytest
import torch

from rlhf_ds.rl import entropy_from_logits, masked_mean


def loop_entropy(logits, temperature=1.0):
    *lead, V = logits.shape
    flat = logits.reshape(-1, V)
    out = []
    for row in flat.tolist():
        z = [x / temperature for x in row]
        top = max(z)
        weights = [math.exp(x - top) for x in z]
        total = sum(weights)
        out.append(-sum(w / total * math.log(w / total) for w in weights if w > 0))
    return torch.tensor(out, dtype=torch.float64).reshape(lead)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_loop(temperature):
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(2, 5, 13, generator=g)
    got = entropy_from_logits(logits, temperature)
    assert got.shape == (2, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), loop_entropy(logits, temperature), atol=1e-5, rtol=1e-5)
    assert (got >= -1e-6).all() and (got <= math.log(13) + 1e-5).all()


def test_hand_values():
    # uniform over 4: ln 4 = 1.3862944
    # logits [0, ln 3]: p = (1/4, 3/4), H = 0.25 ln 4 + 0.75 ln(4/3) = 0.3465736 + 0.2157616 = 0.5623351
    # logits [0, 2 ln 3] at temperature 2 -> [0, ln 3] again: 0.5623351
    # one allowed token (others -inf): 0
    ln3 = math.log(3)
    assert math.isclose(entropy_from_logits(torch.zeros(4)).item(), 1.3862944, rel_tol=1e-6)
    assert math.isclose(entropy_from_logits(torch.tensor([0.0, ln3])).item(), 0.5623351, rel_tol=1e-6)
    assert math.isclose(entropy_from_logits(torch.tensor([0.0, 2 * ln3]), temperature=2.0).item(),
                        0.5623351, rel_tol=1e-6)
    assert entropy_from_logits(torch.tensor([3.0, -float("inf"), -float("inf")])).item() == 0.0


def test_stable_for_large_logits_and_bf16():
    # shifting logits does not change the distribution: [1e4, 1e4 + ln 3] -> 0.5623351
    shifted = torch.tensor([1e4, 1e4 + math.log(3)])
    assert math.isclose(entropy_from_logits(shifted).item(), 0.5623351, rel_tol=1e-3)
    logits = torch.randn(3, 7, 50).bfloat16()
    got = entropy_from_logits(logits)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), loop_entropy(logits.float()), atol=1e-5, rtol=1e-5)


def test_neg_inf_logits_give_finite_gradients():
    logits = torch.tensor([[1.0, 2.0, -float("inf"), 0.5]], requires_grad=True)
    entropy_from_logits(logits).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 2] == 0
    torch.testing.assert_close(entropy_from_logits(logits.detach()).double(),
                               loop_entropy(logits.detach()), atol=1e-6, rtol=1e-6)


def test_masked_mean_of_entropy_over_response_tokens():
    # two positions: uniform over 4 (ln 4) and one certain token (0); the padded one is ignored
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [9.0, -float("inf"), -float("inf"), -float("inf")],
                            [1.0, 2.0, 3.0, 4.0]]])
    mean = masked_mean(entropy_from_logits(logits), torch.tensor([[1, 1, 0]]))
    assert math.isclose(mean.item(), math.log(4) / 2, rel_tol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        entropy_from_logits(torch.zeros(2, 3), temperature=0)
    with pytest.raises(ValueError, match="V > 0"):
        entropy_from_logits(torch.zeros(2, 0))
