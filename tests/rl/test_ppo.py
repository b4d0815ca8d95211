import math

import pytest
import torch

from rlhf_ds.rl import ppo_policy_loss


def loop_ppo(logprobs, old_logprobs, advantages, mask, clip_range, dual_clip=None, num_tokens=None,
             clip_high=None, ratio="token", aggregation="token_mean", max_length=None):
    """Eq. 7 of Schulman et al. 2017 (and Ye et al. 2020's dual clip, DAPO's separate upper bound,
    GSPO's sequence ratio, the three loss aggregations) one token at a time.

    Returns the loss, the stats, and d loss / d logprobs written out by hand.
    """
    B, T = logprobs.shape
    low, high = clip_range, clip_range if clip_high is None else clip_high
    rows = [[t for t in range(T) if mask[b, t]] for b in range(B)]
    n = num_tokens if num_tokens is not None else sum(len(r) for r in rows)
    n_seq = sum(1 for r in rows if r)
    total, clipped, clipped_low, clipped_high, dual, kl, ratios = 0.0, 0, 0, 0, 0, 0.0, []
    grad = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        seq_log_ratio = sum(float(logprobs[b, t]) - float(old_logprobs[b, t]) for t in rows[b]) / max(1, len(rows[b]))
        # weight of token (b, t) in the loss under each aggregation
        if aggregation == "token_mean":
            w = 1.0 / n
        elif aggregation == "seq_mean_token_mean":
            w = 1.0 / (len(rows[b]) * n_seq) if rows[b] else 0.0
        else:
            w = 1.0 / (n_seq * max_length)
        for t in rows[b]:
            log_r = seq_log_ratio if ratio == "sequence" else float(logprobs[b, t]) - float(old_logprobs[b, t])
            r = math.exp(log_r)
            a = float(advantages[b, t])
            s1 = r * a
            s2 = min(max(r, 1 - low), 1 + high) * a
            objective = min(s1, s2)
            # d(r a)/d log pi_t = r a (GSPO-token: the sequence ratio's value, the token's own gradient)
            unclipped_active = s1 <= s2
            if s2 < s1:
                clipped += 1
                clipped_low += a < 0
                clipped_high += a > 0
            if dual_clip is not None and a < 0 and dual_clip * a > objective:
                objective = dual_clip * a
                dual += 1
                unclipped_active = False
            total += -objective * w
            grad[b, t] = -r * a * w if unclipped_active else 0.0
            kl += r - 1 - log_r
            ratios.append(r)
    count = len(ratios)
    stats = {"clip_fraction": clipped / count, "clip_fraction_low": clipped_low / count,
             "clip_fraction_high": clipped_high / count, "approx_kl": kl / count,
             "ratio_mean": sum(ratios) / count, "ratio_max": max(ratios)}
    if dual_clip is not None:
        stats["dual_clip_fraction"] = dual / count
    return total, stats, grad


def random_case(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 7
    old = -torch.rand(B, T, generator=g) * 3
    logprobs = old + 0.4 * torch.randn(B, T, generator=g)
    advantages = torch.randn(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[0, 0] = True
    return logprobs, old, advantages, mask


@pytest.mark.parametrize("clip_range,dual_clip", [(0.2, None), (0.1, None), (0.2, 3.0), (0.3, 1.5)])
def test_matches_loop_including_gradient(clip_range, dual_clip):
    logprobs, old, advantages, mask = random_case(0)
    logprobs.requires_grad_(True)
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip_range, dual_clip)
    want_loss, want_stats, want_grad = loop_ppo(logprobs.detach(), old, advantages, mask, clip_range, dual_clip)
    assert math.isclose(loss.item(), want_loss, rel_tol=1e-5, abs_tol=1e-6)
    assert set(stats) == set(want_stats)
    for key, value in want_stats.items():
        assert math.isclose(stats[key].item(), value, rel_tol=1e-5, abs_tol=1e-6), key
        assert not stats[key].requires_grad
    assert 0 < want_stats["clip_fraction"] < 1  # the case really exercises the clip
    (grad,) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("clip, clip_high, ratio, aggregation", [
    (0.2, 0.28, "token", "token_mean"),                # DAPO's clip-higher
    (0.2, None, "token", "seq_mean_token_mean"),       # GRPO as published
    (0.2, None, "token", "seq_mean_token_sum_norm"),   # Dr. GRPO
    (0.03, None, "sequence", "seq_mean_token_mean"),   # GSPO (its clip ranges are small: sequence ratios stay near 1)
    (0.03, 0.05, "sequence", "token_mean"),
])
def test_options_match_loop_including_gradient(clip, clip_high, ratio, aggregation):
    logprobs, old, advantages, mask = random_case(4)
    if ratio == "sequence":    # GSPO's advantages are per sequence
        advantages = advantages[:, :1].expand_as(advantages).clone()
    logprobs.requires_grad_(True)
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip, clip_range_high=clip_high, ratio=ratio,
                                  aggregation=aggregation, max_length=9)
    want_loss, want_stats, want_grad = loop_ppo(logprobs.detach(), old, advantages, mask, clip, clip_high=clip_high,
                                                ratio=ratio, aggregation=aggregation, max_length=9)
    assert math.isclose(loss.item(), want_loss, rel_tol=1e-5, abs_tol=1e-6)
    for key, value in want_stats.items():
        assert math.isclose(stats[key].item(), value, rel_tol=1e-5, abs_tol=1e-6), key
    assert 0 < want_stats["clip_fraction"] < 1
    (grad,) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-6, rtol=1e-5)


def test_clip_higher_and_sequence_ratio_hand_values():
    # clip low 0.2, high 0.28. r = 1.25, A = 1: below 1.28, unclipped -> loss -1.25 (with a symmetric 0.2:
    # clipped at 1.2). r = 0.5, A = -1: clipped low at 0.8 -> loss 0.8. Token mean: (-1.25 + 0.8) / 2.
    old = torch.zeros(1, 2)
    logprobs = torch.tensor([[math.log(1.25), math.log(0.5)]])
    advantages = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2, clip_range_high=0.28)
    assert math.isclose(loss.item(), (-1.25 + 0.8) / 2, rel_tol=1e-6)
    assert stats["clip_fraction_low"].item() == 0.5 and stats["clip_fraction_high"].item() == 0.0
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    assert math.isclose(loss.item(), (-1.2 + 0.8) / 2, rel_tol=1e-6)
    assert stats["clip_fraction_high"].item() == 0.5
    # GSPO: one sequence, token log-ratios ln 1.25 and ln 0.5 -> s = sqrt(1.25 * 0.5) = 0.7905694 on both
    # tokens; A = 2 on both: min(s A, clip(s, 0.8, 1.2) A) = 0.7905694 * 2 -> loss -1.5811388
    loss, stats = ppo_policy_loss(logprobs, old, torch.full((1, 2), 2.0), mask, ratio="sequence",
                                  aggregation="seq_mean_token_mean")
    assert math.isclose(loss.item(), -2 * math.sqrt(0.625), rel_tol=1e-6)
    assert math.isclose(stats["ratio_max"].item(), math.sqrt(0.625), rel_tol=1e-6)


def test_hand_values():
    # clip_range 0.2. Token by token (r = ratio, A = advantage):
    #   r=1.5, A=1 : min(1.5, 1.2) = 1.2      -> loss -1.2  (clipped)
    #   r=0.5, A=-2: min(-1, 0.8*-2=-1.6)     -> loss  1.6  (clipped)
    #   r=1,   A=3 : 3                        -> loss -3
    #   r=4,   A=-1: min(-4, -1.2) = -4       -> loss  4    (unclipped side; dual 3 bounds it to 3)
    #   5th token masked, holds NaN
    # loss = (-1.2 + 1.6 - 3 + 4) / 4 = 0.35; with dual_clip 3: (-1.2 + 1.6 - 3 + 3) / 4 = 0.1
    # clip_fraction = 2/4; dual_clip_fraction = 1/4 (token 2: -3 * -2 = 6 > 1.6, not active)
    # approx_kl = mean(r - 1 - ln r) = (0.0945349 + 0.1931472 + 0 + 1.6137056) / 4 = 0.4753469
    # ratio_mean = (1.5 + 0.5 + 1 + 4) / 4 = 1.75, ratio_max = 4
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0]])
    logprobs = old + torch.tensor([[math.log(1.5), math.log(0.5), 0.0, math.log(4.0), float("nan")]])
    advantages = torch.tensor([[1.0, -2.0, 3.0, -1.0, float("inf")]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    assert math.isclose(loss.item(), 0.35, rel_tol=1e-6)
    assert stats["clip_fraction"].item() == 0.5
    assert math.isclose(stats["approx_kl"].item(), 0.4753469, rel_tol=1e-6)
    assert math.isclose(stats["ratio_mean"].item(), 1.75, rel_tol=1e-6)
    assert math.isclose(stats["ratio_max"].item(), 4.0, rel_tol=1e-6)
    assert "dual_clip_fraction" not in stats
    # token 1 (A > 0) is clipped high, token 2 (A < 0) clipped low
    assert stats["clip_fraction_high"].item() == 0.25 and stats["clip_fraction_low"].item() == 0.25
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2, dual_clip=3.0)
    assert math.isclose(loss.item(), 0.1, rel_tol=1e-5)
    assert stats["dual_clip_fraction"].item() == 0.25


def test_on_policy_is_plain_policy_gradient_and_clip_never_acts():
    # r == 1: loss = -mean(A) and d loss / d logprob_t = -A_t / N
    logprobs, _, advantages, mask = random_case(1)
    logprobs.requires_grad_(True)
    loss, stats = ppo_policy_loss(logprobs, logprobs.detach(), advantages, mask)
    n = mask.sum()
    torch.testing.assert_close(loss, -(advantages * mask).sum() / n)
    (grad,) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(grad, -advantages * mask / n)
    assert stats["clip_fraction"].item() == 0 and stats["approx_kl"].item() == 0


def test_masked_garbage_and_extreme_ratios_keep_gradients_finite():
    # log r = 101 would overflow exp() to inf in fp32 without the clamp to +-20
    logprobs = torch.tensor([[0.0, 100.0, float("-inf")]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    advantages = torch.tensor([[1.0, -1.0, float("nan")]])
    loss, stats = ppo_policy_loss(logprobs, old, advantages, torch.tensor([[1, 1, 0]]), dual_clip=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    assert all(torch.isfinite(v) for v in stats.values())
    assert logprobs.grad[0, 2] == 0


def test_advantages_and_old_logprobs_get_no_gradient():
    logprobs, old, advantages, mask = random_case(2)
    old.requires_grad_(True)
    advantages.requires_grad_(True)
    loss, _ = ppo_policy_loss(logprobs, old, advantages, mask)
    assert not loss.requires_grad


def test_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"shape mismatch: .*advantages \(2, 1\)"):
        ppo_policy_loss(x, x, torch.zeros(2, 1), x)
    with pytest.raises(ValueError, match="clip_range must be > 0"):
        ppo_policy_loss(x, x, x, x, clip_range=0.0)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_policy_loss(x, x, x, x, dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_range_high must be > 0"):
        ppo_policy_loss(x, x, x, x, clip_range_high=0.0)
    with pytest.raises(ValueError, match="allowed: token, sequence"):
        ppo_policy_loss(x, x, x, x, ratio="group")
    with pytest.raises(ValueError, match="allowed: token_mean, seq_mean_token_mean, seq_mean_token_sum_norm"):
        ppo_policy_loss(x, x, x, x, aggregation="sum")
