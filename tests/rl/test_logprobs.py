import math

import pytest
import torch

from rlhf_ds.rl import IGNORE_INDEX, gather_logprobs


def loop_logprobs(logits, labels, temperature=1.0, ignore_index=IGNORE_INDEX):
    """log softmax by hand, one position at a time, in python floats."""
    B, T, V = logits.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            label = int(labels[b, t])
            if label == ignore_index:
                continue
            z = [float(logits[b, t, v]) / temperature for v in range(V)]
            top = max(z)
            log_norm = top + math.log(sum(math.exp(x - top) for x in z))
            out[b, t] = z[label] - log_norm
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_matches_loop_with_ignored_positions(temperature):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 5, 7, generator=g)
    labels = torch.randint(0, 7, (3, 5), generator=g)
    labels[0, 4] = IGNORE_INDEX
    labels[2, :2] = IGNORE_INDEX
    got = gather_logprobs(logits, labels, temperature=temperature)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    torch.testing.assert_close(got.double(), loop_logprobs(logits, labels, temperature),
                               atol=1e-5, rtol=1e-5)
    assert (got[labels == IGNORE_INDEX] == 0).all()
    assert (got <= 0).all()


def test_hand_values():
    # logits [0, ln 3]: softmax = [1/4, 3/4]; log(3/4) = -0.2876821, log(1/4) = -1.3862944.
    # logits [0, 2 ln 3] = [0, ln 9]: softmax = [1/10, 9/10]; log(9/10) = -0.1053605.
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [0.0, ln3], [0.0, 2 * ln3]]])
    labels = torch.tensor([[1, 0, 1]])
    torch.testing.assert_close(gather_logprobs(logits, labels),
                               torch.tensor([[-0.2876821, -1.3862944, -0.1053605]]))
    # Temperature 2 halves the logits: [0, 2 ln 3] / 2 = [0, ln 3], so log(3/4) again.
    torch.testing.assert_close(gather_logprobs(logits, labels, temperature=2.0)[0, 2],
                               torch.tensor(-0.2876821))


def test_custom_ignore_index_and_flat_layout():
    logits = torch.zeros(4, 2)  # uniform over 2 tokens: log(1/2) = -0.6931472
    labels = torch.tensor([0, 1, -1, 1])
    got = gather_logprobs(logits, labels, ignore_index=-1)
    torch.testing.assert_close(got, torch.tensor([-0.6931472, -0.6931472, 0.0, -0.6931472]))


def test_bf16_input_is_computed_in_fp32():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 11, generator=g).bfloat16()
    labels = torch.randint(0, 11, (2, 3), generator=g)
    got = gather_logprobs(logits, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), loop_logprobs(logits.float(), labels), atol=1e-5, rtol=1e-5)


def test_gradient_is_zero_on_ignored_positions():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    labels = torch.tensor([[1, IGNORE_INDEX, 2]])
    gather_logprobs(logits, labels).sum().backward()
    assert (logits.grad[0, 1] == 0).all()
    assert logits.grad[0, 0].abs().sum() > 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="temperature"):
        gather_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match=r"logits \(1, 2, 3\) and labels \(1, 3\)"):
        gather_logprobs(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))
