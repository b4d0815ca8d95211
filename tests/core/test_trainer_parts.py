"""Pieces of the trainers that need no launcher: batch plans, the sampler, response masks, positions."""
import pytest
import torch

from rlhf_ds.models.positions import last_token_index, positions_from_mask
from rlhf_ds.trainers.common import ShardedSampler, plan_batches
from rlhf_ds.trainers.rl_sampling import response_masks
from rlhf_ds.trainers.rl_metrics import StatSums


def test_plan_batches_divides_or_explains():
    p = plan_batches(32, 4, 2, "sft")
    assert (p.micro, p.grad_accum, p.world) == (4, 4, 2)
    assert plan_batches(32, 0, 2, "sft").micro == 16
    with pytest.raises(ValueError, match="not divisible by the 3 ranks"):
        plan_batches(32, 0, 3, "sft")
    with pytest.raises(ValueError, match="micro-batches of 5"):
        plan_batches(32, 5, 2, "sft")


def test_sampler_shards_cover_each_batch_once_and_resume_exactly():
    ranks = [ShardedSampler(100, 8, r, 2, seed=3) for r in range(2)]
    seen = []
    for _ in range(12):                         # 12 batches of 8 = one epoch (96 of 100) on 2 ranks
        parts = [s.next_indices() for s in ranks]
        assert len(parts[0]) == len(parts[1]) == 4
        assert not set(parts[0]) & set(parts[1])
        seen += parts[0] + parts[1]
    assert len(set(seen)) == 96                  # no record twice within the epoch
    resumed = ShardedSampler(100, 8, 0, 2, seed=3)
    resumed.load_state_dict(ranks[0].state_dict())
    assert resumed.next_indices() == ranks[0].next_indices()   # next epoch, same order
    with pytest.raises(ValueError, match="cannot resume"):
        ShardedSampler(90, 8, 0, 2, seed=3).load_state_dict(ranks[0].state_dict())


def test_response_masks_stop_at_first_eos_and_pad_after():
    eos, pad = 2, 0
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    seqs = torch.tensor([[0, 5, 6, 7, 2, 9, 2],       # EOS at response position 1; 9 after it must go
                         [4, 5, 6, 7, 8, 9, 9]])      # no EOS: every generated token counts
    out, attn, action, ended = response_masks(seqs, prompt_mask, eos, pad)
    assert action.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out[0].tolist() == [0, 5, 6, 7, 2, 0, 0]
    assert attn.tolist() == [[0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]]
    assert ended.tolist() == [True, False]


def test_positions_and_last_token_for_any_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    assert positions_from_mask(mask)[0, 2:5].tolist() == [0, 1, 2]
    assert last_token_index(mask).tolist() == [4, 5, 1]
    with pytest.raises(ValueError, match="all zeros"):
        last_token_index(torch.zeros(1, 3, dtype=torch.long))


def test_update_statistics_are_token_weighted_means_except_maxima():
    stats = StatSums()
    stats.add("clip_fraction", torch.tensor(0.1), 30.0)
    stats.add("clip_fraction", torch.tensor(0.4), 10.0)
    stats.add("ratio_max", torch.tensor(1.3), 30.0)
    stats.add("ratio_max", torch.tensor(2.5), 10.0)
    out = stats.reduce()
    assert out["clip_fraction"] == pytest.approx((0.1 * 30 + 0.4 * 10) / 40)
    assert out["ratio_max"] == pytest.approx(2.5)   # the largest, not a weighted mean of the two
