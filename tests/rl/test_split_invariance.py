"""Splitting a batch over ranks / micro-batches, each half divided by the GLOBAL count,
must give the full-batch loss (as the sum of the halves) and the same gradients."""
import pytest
import torch

from rlhf_ds.rl import (dpo_loss, entropy_from_logits, kwise_ranking_loss, pairwise_ranking_loss,
                        ppo_policy_loss, token_mean, value_loss)

g = torch.Generator().manual_seed(0)
B, T = 6, 5
MASK = torch.rand(B, T, generator=g) > 0.3
MASK[:3, 2:] = False  # the first half is much shorter: local token means would differ
TOKENS = dict(
    logprobs=-torch.rand(B, T, generator=g), old_logprobs=-torch.rand(B, T, generator=g),
    advantages=torch.randn(B, T, generator=g), values=torch.randn(B, T, generator=g),
    old_values=torch.randn(B, T, generator=g), returns=torch.randn(B, T, generator=g),
    logits=torch.randn(B, T, 7, generator=g))
PAIRS = [torch.randn(B, generator=g) for _ in range(4)]
GROUP_SCORES = torch.randn(B, 4, generator=g)
GROUP_RANKS = torch.stack([torch.randperm(4, generator=g) for _ in range(B)])
GROUP_RANKS[0, 1:] = -1  # a group without pairs in the first half


def ppo(rows, count):
    return ppo_policy_loss(TOKENS["logprobs"][rows], TOKENS["old_logprobs"][rows], TOKENS["advantages"][rows],
                           MASK[rows], clip_range=0.1, dual_clip=2.0, num_tokens=count)[0]


def value(rows, count):
    return value_loss(TOKENS["values"][rows], TOKENS["old_values"][rows], TOKENS["returns"][rows],
                      MASK[rows], value_clip=0.2, num_tokens=count)[0]


def entropy(rows, count):
    return -token_mean(entropy_from_logits(TOKENS["logits"][rows]), MASK[rows], count)


def dpo(rows, count):
    return dpo_loss(*(p[rows] for p in PAIRS), beta=0.2, num_pairs=count)[0]


def pairwise(rows, count):
    return pairwise_ranking_loss(PAIRS[0][rows], PAIRS[1][rows], margin=PAIRS[2][rows].abs(), num_pairs=count)[0]


def kwise(rows, count):
    return kwise_ranking_loss(GROUP_SCORES[rows], GROUP_RANKS[rows], num_groups=count)[0]


CASES = {  # loss, the tensor it differentiates, the global count
    "ppo": (ppo, TOKENS["logprobs"], MASK.sum()),
    "value": (value, TOKENS["values"], MASK.sum()),
    "entropy": (entropy, TOKENS["logits"], MASK.sum()),
    "dpo": (dpo, PAIRS[0], B),
    "pairwise": (pairwise, PAIRS[0], B),
    "kwise": (kwise, GROUP_SCORES, B - 1),  # groups with at least one pair
}


@pytest.mark.parametrize("name", list(CASES))
def test_two_halves_with_global_count_equal_full_batch(name):
    loss_fn, leaf, count = CASES[name]
    leaf.requires_grad_(True)
    try:
        full = loss_fn(slice(None), None)  # default count = local count = global count here
        (full_grad,) = torch.autograd.grad(full, leaf)
        halves = loss_fn(slice(0, 3), count) + loss_fn(slice(3, None), count)
        (split_grad,) = torch.autograd.grad(halves, leaf)
        torch.testing.assert_close(halves, full)
        torch.testing.assert_close(split_grad, full_grad)
        assert full_grad.abs().sum() > 0
        if name in ("ppo", "value", "entropy", "kwise"):
            # the halves really are uneven: averaging them by their local counts would differ
            local = 0.5 * (loss_fn(slice(0, 3), None) + loss_fn(slice(3, None), None))
            assert abs(local.item() - full.item()) > 1e-4
    finally:
        leaf.requires_grad_(False)
