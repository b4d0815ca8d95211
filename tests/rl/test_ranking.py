import math

import pytest
import torch

from rlhf_ds.rl import kwise_ranking_loss, pairwise_ranking_loss


def neg_log_sigmoid(x):
    return math.log1p(math.exp(-x)) if x > 0 else -x + math.log1p(math.exp(x))


def loop_pairwise(chosen, rejected, margin=None):
    B = len(chosen)
    losses, correct, diffs = [], 0, []
    for i in range(B):
        d = float(chosen[i]) - float(rejected[i])
        m = 0.0 if margin is None else float(margin[i])
        losses.append(neg_log_sigmoid(d - m))
        correct += d > 0
        diffs.append(d)
    return sum(losses) / B, correct / B, sum(diffs) / B


def loop_kwise(scores, ranks, mask=None):
    """InstructGPT eq. 1: average over each group's ordered pairs, then over groups."""
    B, K = scores.shape
    group_losses, n_pairs, n_correct = [], 0, 0
    for b in range(B):
        present = [k for k in range(K) if ranks[b, k] >= 0 and (mask is None or mask[b, k])]
        pair_losses = []
        for i in present:
            for j in present:
                if ranks[b, i] < ranks[b, j]:  # i is better
                    d = float(scores[b, i]) - float(scores[b, j])
                    pair_losses.append(neg_log_sigmoid(d))
                    n_correct += d > 0
        if pair_losses:
            group_losses.append(sum(pair_losses) / len(pair_losses))
            n_pairs += len(pair_losses)
    return sum(group_losses) / len(group_losses), n_correct / n_pairs, n_pairs, len(group_losses)


def test_pairwise_matches_loop_with_and_without_margin():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(9, generator=g), torch.randn(9, generator=g)
    margin = torch.rand(9, generator=g)
    for m in (None, margin):
        loss, stats = pairwise_ranking_loss(chosen, rejected, m)
        want_loss, want_acc, want_margin = loop_pairwise(chosen, rejected, m)
        assert math.isclose(loss.item(), want_loss, rel_tol=1e-5)
        assert math.isclose(stats["accuracy"].item(), want_acc, rel_tol=1e-6)
        assert math.isclose(stats["margin"].item(), want_margin, rel_tol=1e-5, abs_tol=1e-6)


def test_pairwise_hand_values_and_gradient():
    # d = r_chosen - r_rejected = [2, 0]
    # -log sigmoid(2) = log(1 + e^-2) = 0.1269280, -log sigmoid(0) = ln 2 = 0.6931472 -> mean 0.4100376
    # accuracy: the tie counts as wrong -> 0.5; mean margin 1
    # per-pair margin [1, 0]: log(1 + e^-1) = 0.3132617 -> (0.3132617 + 0.6931472) / 2 = 0.5032044
    # scalar margin 1: (0.3132617 + log(1 + e) = 1.3132617) / 2 = 0.8132617
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0])
    loss, stats = pairwise_ranking_loss(chosen, rejected)
    assert math.isclose(loss.item(), 0.4100376, rel_tol=1e-6)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == 1.0
    assert stats["chosen_mean"].item() == 1.0 and stats["rejected_mean"].item() == 0.0
    loss2, _ = pairwise_ranking_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0]))
    assert math.isclose(loss2.item(), 0.5032044, rel_tol=1e-6)
    loss3, _ = pairwise_ranking_loss(chosen, rejected, margin=1.0)
    assert math.isclose(loss3.item(), 0.8132617, rel_tol=1e-6)
    # d/d r_chosen of -log sigmoid(d) / B = -sigmoid(-d) / 2: [-0.1192029 / 2, -0.5 / 2]
    (grad,) = torch.autograd.grad(loss, chosen)
    torch.testing.assert_close(grad, torch.tensor([-0.0596015, -0.25]))


@pytest.mark.parametrize("seed", [0, 1])
def test_kwise_matches_loop_with_variable_k_and_ties(seed):
    g = torch.Generator().manual_seed(seed)
    B, K = 6, 5
    scores = torch.randn(B, K, generator=g)
    ranks = torch.stack([torch.randperm(K, generator=g) for _ in range(B)])
    ranks[1, 3:] = -1           # K = 3 in this row
    ranks[2, 1:] = -1           # a single response: no pair
    ranks[3, 0] = ranks[3, 1]   # a tie in the reference ranking
    scores[1, 3:] = float("nan")  # missing entries may hold garbage
    scores.requires_grad_(True)
    loss, stats = kwise_ranking_loss(scores, ranks)
    want_loss, want_acc, want_pairs, want_groups = loop_kwise(scores.detach(), ranks)
    assert math.isclose(loss.item(), want_loss, rel_tol=1e-5)
    assert math.isclose(stats["accuracy"].item(), want_acc, rel_tol=1e-6)
    assert stats["num_pairs"].item() == want_pairs and stats["num_groups"].item() == want_groups == 5
    loss.backward()
    assert torch.isfinite(scores.grad).all() and (scores.grad[1, 3:] == 0).all()


def test_kwise_hand_values():
    # group 0: scores [3, 1, 2], ranks [0, 2, 1] (order 0 > 2 > 1), C(3,2) = 3 pairs:
    #   (0,1): d = 2, (0,2): d = 1, (2,1): d = 1
    #   loss_0 = (log(1+e^-2) + 2 log(1+e^-1)) / 3 = (0.1269280 + 0.6265234) / 3 = 0.2511505
    # group 1: scores [0, 5, x], ranks [1, 0, -1]: one pair, d = 5: log(1+e^-5) = 0.0067153
    # group 2: one valid entry: no pair, not counted
    # loss = (0.2511505 + 0.0067153) / 2 = 0.1289329; accuracy 4/4; 4 pairs; 2 groups
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 9.0], [1.0, 2.0, 3.0]])
    ranks = torch.tensor([[0, 2, 1], [1, 0, -1], [0, -1, -1]])
    loss, stats = kwise_ranking_loss(scores, ranks)
    assert math.isclose(loss.item(), 0.1289329, rel_tol=1e-6)
    assert stats["accuracy"].item() == 1.0
    assert stats["num_pairs"].item() == 4 and stats["num_groups"].item() == 2
    # the same missing entries expressed by a mask instead of rank -1
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    loss_m, _ = kwise_ranking_loss(scores, torch.tensor([[0, 2, 1], [1, 0, 2], [0, 1, 2]]), mask=mask)
    assert math.isclose(loss_m.item(), 0.1289329, rel_tol=1e-6)


def test_kwise_with_two_responses_is_pairwise():
    g = torch.Generator().manual_seed(4)
    chosen, rejected = torch.randn(5, generator=g), torch.randn(5, generator=g)
    ranks = torch.tensor([[0, 1]] * 5)
    loss_k, _ = kwise_ranking_loss(torch.stack([chosen, rejected], dim=1), ranks)
    loss_p, _ = pairwise_ranking_loss(chosen, rejected)
    torch.testing.assert_close(loss_k, loss_p)


def test_kwise_tied_ranks_are_skipped():
    # ranks [0, 0, 1]: only (0,2) and (1,2) are ordered -> weight 1/2 each
    # scores [0, 0, 0]: each pair costs ln 2 -> loss ln 2 = 0.6931472
    loss, stats = kwise_ranking_loss(torch.zeros(1, 3), torch.tensor([[0, 0, 1]]))
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert stats["num_pairs"].item() == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape mismatch"):
        pairwise_ranking_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"chosen_scores must be \(B,\)"):
        pairwise_ranking_loss(torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"shape mismatch: chosen_scores \(3,\), margin \(2,\)"):
        pairwise_ranking_loss(torch.zeros(3), torch.zeros(3), margin=torch.zeros(2))
    with pytest.raises(ValueError, match="num_pairs must be >= 0"):
        pairwise_ranking_loss(torch.zeros(3), torch.zeros(3), num_pairs=-3)
    with pytest.raises(ValueError, match="ranks must be an integer tensor"):
        kwise_ranking_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape mismatch: scores \(2, 3\), ranks \(2, 2\)"):
        kwise_ranking_loss(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"scores must be \(B, K\)"):
        kwise_ranking_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long))
