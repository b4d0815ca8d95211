import pytest
import torch

from rlhf_ds.rl import aggregate_loss, sequence_mean, token_mean


def test_token_mean_hand_values():
    # selected: 2, 4, 6 (the inf is masked out); local count 3 -> 12 / 3 = 4; global count 8 -> 1.5
    x = torch.tensor([[2.0, float("inf")], [4.0, 6.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    assert token_mean(x, mask).item() == 4.0
    assert token_mean(x, mask, num_tokens=8).item() == 1.5
    assert token_mean(x, mask, num_tokens=torch.tensor(8)).item() == 1.5
    assert token_mean(x, mask, num_tokens=torch.tensor([8.0])).item() == 1.5


def test_token_mean_matches_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.5
    total, count = 0.0, 0
    for b in range(3):
        for t in range(5):
            if mask[b, t]:
                total += float(x[b, t])
                count += 1
    assert abs(token_mean(x, mask).item() - total / count) < 1e-6
    assert abs(token_mean(x, mask, num_tokens=100.0).item() - total / 100) < 1e-7


def test_empty_selection_gives_zero_loss_and_zero_gradient():
    x = torch.randn(2, 3, requires_grad=True)
    for count in (None, 0, torch.tensor(0)):
        loss = token_mean(x, torch.zeros(2, 3), num_tokens=count)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, x)
        assert (grad == 0).all()
    assert sequence_mean(torch.zeros(0)).item() == 0.0


def test_split_over_ranks_gives_full_batch_loss_and_gradients():
    """Two micro-batches with the global count sum to the full-batch loss and gradient."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 7, generator=g, requires_grad=True)
    mask = torch.rand(6, 7, generator=g) > 0.3
    mask[0, :] = False
    mask[1, 1:] = False  # very uneven halves: local means would weight tokens differently
    full = token_mean(x, mask)
    (full_grad,) = torch.autograd.grad(full, x)
    n = mask.sum()
    parts = [token_mean(x[:3], mask[:3], num_tokens=n), token_mean(x[3:], mask[3:], num_tokens=n)]
    split = parts[0] + parts[1]
    (split_grad,) = torch.autograd.grad(split, x)
    torch.testing.assert_close(split, full)
    torch.testing.assert_close(split_grad, full_grad)
    # ... whereas averaging each half by its own count does not (the convention matters here).
    local = 0.5 * (token_mean(x[:3], mask[:3]) + token_mean(x[3:], mask[3:]))
    assert abs(local.item() - full.item()) > 1e-3


def test_sequence_mean():
    # [1, 2, 3, 6]: local mean 12 / 4 = 3; with a global count of 6, 12 / 6 = 2
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert sequence_mean(x).item() == 3.0
    assert sequence_mean(x, num_sequences=6).item() == 2.0
    assert sequence_mean(x[:2], 6).item() + sequence_mean(x[2:], 6).item() == 2.0


def test_sequence_mean_matches_loop():
    x = torch.randn(11, generator=torch.Generator().manual_seed(2))
    total = 0.0
    for v in x.tolist():
        total += v
    assert abs(sequence_mean(x).item() - total / 11) < 1e-6
    assert abs(sequence_mean(x, num_sequences=torch.tensor(40)).item() - total / 40) < 1e-7


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape mismatch"):
        token_mean(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="num_tokens must be >= 0"):
        token_mean(torch.zeros(2, 3), torch.zeros(2, 3), num_tokens=-1)
    with pytest.raises(ValueError, match="0-d tensor"):
        token_mean(torch.zeros(2, 3), torch.zeros(2, 3), num_tokens=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"per_sequence must be \(B,\)"):
        sequence_mean(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_sequences must be >= 0"):
        sequence_mean(torch.zeros(2), num_sequences=-2)


def test_loss_aggregations_hand_values():
    # rows: [1, 2, 3] (3 tokens), [6, pad] (1 token), an empty row (not counted as a sequence)
    x = torch.tensor([[1.0, 2.0, 3.0], [6.0, float("nan"), 0.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert aggregate_loss(x, mask, "token_mean").item() == 12 / 4
    assert aggregate_loss(x, mask, "seq_mean_token_mean").item() == (2 + 6) / 2
    assert aggregate_loss(x, mask, "seq_mean_token_sum_norm", max_length=4).item() == 12 / (2 * 4)
    # global counts: 8 tokens, 4 sequences over all ranks
    assert aggregate_loss(x, mask, "token_mean", num_tokens=8).item() == 12 / 8
    assert aggregate_loss(x, mask, "seq_mean_token_mean", num_sequences=4).item() == 8 / 4
    assert aggregate_loss(x, mask, "seq_mean_token_sum_norm", num_sequences=4, max_length=4).item() == 12 / 16
    with pytest.raises(ValueError, match="needs max_length"):
        aggregate_loss(x, mask, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="allowed: token_mean"):
        aggregate_loss(x, mask, "mean")


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_loss_aggregations_add_up_over_a_split_batch(aggregation):
    """Two halves with the global counts sum to the whole: what a split over ranks relies on."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    mask[:, 0] = True
    whole = aggregate_loss(x, mask, aggregation, max_length=5)
    counts = dict(num_tokens=mask.sum(), num_sequences=6, max_length=5)
    halves = sum(aggregate_loss(x[i:i + 3], mask[i:i + 3], aggregation, **counts) for i in (0, 3))
    torch.testing.assert_close(halves, whole)
