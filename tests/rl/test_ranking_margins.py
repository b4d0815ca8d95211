"""Margins in the K-wise ranking loss: each group's margin in every ordered pair (InstructGPT eq. 1
with Llama 2 eq. 2's margin), so a pair that falls back to the K-wise loss in a batch mixed with
rankings keeps its margin (issue 14, item 6)."""
import math

import pytest
import torch

from rlhf_ds.data.batch import RankingBatch
from rlhf_ds.rl import kwise_ranking_loss, pairwise_ranking_loss
from rlhf_ds.trainers.reward import ranking_loss


def _reference(scores, ranks, margins):
    """Slow loop: per group, the mean over ordered pairs (i better than j) of -log sigmoid(s_i - s_j - m)."""
    total, groups = 0.0, 0
    for s, r, m in zip(scores.tolist(), ranks.tolist(), margins):
        terms = [-math.log(1.0 / (1.0 + math.exp(-(s[i] - s[j] - m))))
                 for i in range(len(s)) for j in range(len(s)) if 0 <= r[i] < r[j] and r[j] >= 0]
        if terms:
            total += sum(terms) / len(terms)
            groups += 1
    return total / groups


def test_hand_computed_group_of_three():
    scores = torch.tensor([[2.0, 1.0, 0.0]])
    ranks = torch.tensor([[0, 1, 2]])
    loss, _ = kwise_ranking_loss(scores, ranks, margin=0.5)
    nls = lambda x: math.log1p(math.exp(-x))   # -log sigmoid(x)
    assert float(loss) == pytest.approx((nls(0.5) + nls(1.5) + nls(0.5)) / 3, rel=1e-6)


def test_padded_pair_gets_the_pairwise_loss_with_its_margin():
    scores = torch.tensor([[0.3, 0.9, 5.0, -2.0], [1.5, -0.5, 0.0, 0.0]])
    ranks = torch.tensor([[0, 1, -1, -1], [0, 1, -1, -1]])
    margins = torch.tensor([1.0, 0.25])
    kwise, _ = kwise_ranking_loss(scores, ranks, margin=margins)
    pair, _ = pairwise_ranking_loss(scores[:, 0], scores[:, 1], margin=margins)
    torch.testing.assert_close(kwise, pair)


def test_mixed_micro_batch_keeps_margins():
    """What trainers/reward.py does with a micro-batch of a pair (padded to K = 4) and a 4-way ranking:
    the K-wise loss, with each record's margin plus reward.margin."""
    torch.manual_seed(0)
    scores = torch.randn(3, 4, requires_grad=True)
    ranks = torch.tensor([[0, 1, -1, -1], [0, 1, 2, 3], [0, 1, 1, 2]])
    batch = RankingBatch(input_ids=torch.zeros(3, 4, 2, dtype=torch.long),
                         attention_mask=torch.ones(3, 4, 2, dtype=torch.long),
                         action_mask=torch.ones(3, 4, 2, dtype=torch.long),
                         ranks=ranks, margins=torch.tensor([2.0, 0.0, 0.5]))
    loss, _ = ranking_loss(scores, batch, "auto", 0.1, 3)
    expected = _reference(scores.detach(), ranks, [2.1, 0.1, 0.6])
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()                         # margins are constants: the gradient reaches the scores only
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


def test_margin_shape_must_match_the_groups():
    with pytest.raises(ValueError, match="shape mismatch"):
        kwise_ranking_loss(torch.zeros(2, 3), torch.tensor([[0, 1, 2], [0, 1, 2]]), margin=torch.zeros(3))
