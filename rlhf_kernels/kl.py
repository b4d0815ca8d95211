"""Per-token KL estimates and KL-shaped rewards in one pass over the response tokens.

With log r = logprobs - ref_logprobs on tokens sampled from pi (Schulman 2020,
"Approximating KL Divergence"): k1 = log r, k2 = (log r)^2 / 2,
k3 = exp(-log r) - 1 + log r (log r clamped to +-20 as in `rlhf_ds.rl.kl`).
Rewards (Ziegler et al. 2019, eq. 2): r_t = -kl_coef * KL_t on response tokens, plus
the sequence score at the last one; 0 off the mask.

The Triton kernel gives each row one program that walks the row's blocks from the
last to the first: the first block holding a masked-in token is where the score goes,
so the last response index needs no separate pass, and no host synchronisation.
k3 uses a series for small |log r|, where exp(-x) - 1 + x cancels catastrophically
in fp32 (the reference uses expm1).
"""
from __future__ import annotations

import torch

from rlhf_ds.rl import KL_ESTIMATORS, last_action_index
from rlhf_ds.rl import kl_shaped_rewards as kl_shaped_rewards_reference
from rlhf_ds.rl import per_token_kl as per_token_kl_reference

from ._backend import HAS_TRITON, resolve, tl, triton

K3_CLAMP = 20.0  # same as rlhf_ds.rl.kl.K3_LOG_RATIO_CLAMP

# ----------------------------------------------------------------------------- Triton
if HAS_TRITON:

    @triton.jit
    def _kl_rewards_kernel(
        lp_ptr, ref_ptr, mask_ptr, scores_ptr, kl_ptr, rew_ptr,
        T, s_lp_b, s_lp_t, s_ref_b, s_ref_t, s_m_b, s_m_t, kl_coef,
        ESTIMATOR: tl.constexpr, WITH_REWARDS: tl.constexpr, BLOCK_T: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        out_row = row * T
        if WITH_REWARDS:
            score = tl.load(scores_ptr + row).to(tl.float32)
        found = tl.full((), 0, tl.int32)
        n_blocks = tl.cdiv(T, BLOCK_T)
        for i in range(0, n_blocks):
            t = (n_blocks - 1 - i) * BLOCK_T + tl.arange(0, BLOCK_T)
            in_seq = t < T
            lp = tl.load(lp_ptr + row * s_lp_b + t * s_lp_t, mask=in_seq, other=0.0).to(tl.float32)
            ref = tl.load(ref_ptr + row * s_ref_b + t * s_ref_t, mask=in_seq, other=0.0).to(tl.float32)
            on = tl.load(mask_ptr + row * s_m_b + t * s_m_t, mask=in_seq, other=0) != 0
            x = lp - ref
            if ESTIMATOR == 0:
                kl = x
            elif ESTIMATOR == 1:
                kl = 0.5 * x * x
            else:
                x = tl.minimum(tl.maximum(x, -20.0), 20.0)
                direct = tl.exp(-x) - 1.0 + x
                # exp(-x) - 1 + x = x^2 (1/2 - x/6 + x^2/24 - ...), to x^8, for |x| < 1/2
                poly = -1.0 / 40320.0 * x + 1.0 / 5040.0
                poly = poly * x - 1.0 / 720.0
                poly = poly * x + 1.0 / 120.0
                poly = poly * x - 1.0 / 24.0
                poly = poly * x + 1.0 / 6.0
                poly = poly * x - 0.5
                series = -(x * x) * poly
                kl = tl.where(tl.abs(x) < 0.5, series, direct)
            kl = tl.where(on, kl, 0.0)
            tl.store(kl_ptr + out_row + t, kl, mask=in_seq)
            if WITH_REWARDS:
                rew = -kl_coef * kl
                last = tl.max(tl.where(on, t, -1), 0)
                take = (found == 0) & (last >= 0)
                rew = tl.where(take & (t == last), rew + score, rew)
                found = tl.where(last >= 0, 1, found)
                tl.store(rew_ptr + out_row + t, rew, mask=in_seq)


def _mask_for_triton(action_mask: torch.Tensor) -> torch.Tensor:
    return action_mask.view(torch.uint8) if action_mask.dtype == torch.bool else action_mask


def triton_kl_rewards(logprobs, ref_logprobs, action_mask, scores, kl_coef, estimator, with_rewards):
    """Host launcher: fp32 (kl, rewards-or-None), both contiguous (B, T)."""
    B, T = logprobs.shape
    kl = torch.empty((B, T), dtype=torch.float32, device=logprobs.device)
    rew = torch.empty_like(kl) if with_rewards else kl
    if B * T == 0:
        return kl, (rew if with_rewards else None)
    mask = _mask_for_triton(action_mask)
    block = max(16, min(triton.next_power_of_2(T), 1024))
    _kl_rewards_kernel[(B,)](
        logprobs, ref_logprobs, mask, scores if with_rewards else kl, kl, rew, T,
        logprobs.stride(0), logprobs.stride(1), ref_logprobs.stride(0), ref_logprobs.stride(1),
        mask.stride(0), mask.stride(1), float(kl_coef),
        ESTIMATOR=KL_ESTIMATORS.index(estimator), WITH_REWARDS=with_rewards, BLOCK_T=block,
        num_warps=4 if block <= 512 else 8)
    return kl, (rew if with_rewards else None)


def _dkl_dlogratio(logprobs, ref_logprobs, estimator):
    x = logprobs.float() - ref_logprobs.float()
    if estimator == "k1":
        return torch.ones_like(x)
    if estimator == "k2":
        return x
    inside = (x >= -K3_CLAMP) & (x <= K3_CLAMP)  # clamp passes no gradient outside
    return torch.where(inside, -torch.expm1(-x.clamp(-K3_CLAMP, K3_CLAMP)), 0.0)


class _TritonKL(torch.autograd.Function):
    """Triton forward; the backward is elementwise torch (it is only needed for KL-in-loss)."""

    @staticmethod
    def forward(ctx, logprobs, ref_logprobs, action_mask, scores, kl_coef, estimator, with_rewards):
        kl, rew = triton_kl_rewards(logprobs, ref_logprobs, action_mask, scores, kl_coef, estimator, with_rewards)
        ctx.save_for_backward(logprobs, ref_logprobs, action_mask)
        ctx.cfg = (kl_coef, estimator, with_rewards, scores.dtype if with_rewards else None)
        if not with_rewards:
            rew = kl.new_empty(0)
            ctx.mark_non_differentiable(rew)
        return kl, rew

    @staticmethod
    def backward(ctx, g_kl, g_rew):
        logprobs, ref_logprobs, action_mask = ctx.saved_tensors
        kl_coef, estimator, with_rewards, scores_dtype = ctx.cfg
        on = action_mask.bool()
        g = g_kl.float()
        if with_rewards:
            g = g - float(kl_coef) * g_rew.float()
        g_x = torch.where(on, g * _dkl_dlogratio(logprobs, ref_logprobs, estimator), 0.0)
        g_lp = g_x.to(logprobs.dtype) if ctx.needs_input_grad[0] else None
        g_ref = (-g_x).to(ref_logprobs.dtype) if ctx.needs_input_grad[1] else None
        g_scores = None
        if with_rewards and ctx.needs_input_grad[3]:
            last = last_action_index(action_mask)
            picked = g_rew.float().gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1)
            g_scores = torch.where(last >= 0, picked, 0.0).to(scores_dtype)
        return g_lp, g_ref, None, g_scores, None, None, None


# --------------------------------------------------------------------------- public API
def _check(logprobs, ref_logprobs, action_mask, estimator, scores=None):
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {', '.join(KL_ESTIMATORS)}")
    if logprobs.dim() != 2 or logprobs.shape != ref_logprobs.shape or logprobs.shape != action_mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, ref_logprobs {tuple(ref_logprobs.shape)} and "
                         f"action_mask {tuple(action_mask.shape)} must all be the same (B, T)")
    if scores is not None and scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} must be (B,) = ({logprobs.shape[0]},)")


def _torch_per_token_kl(logprobs, ref_logprobs, action_mask, estimator):
    """The twin's formulas, except that k3 is evaluated in fp64 from the fp32 log-ratio:
    expm1(-x) + x cancels to x^2 / 2, which fp32 resolves badly for |x| < ~1e-3."""
    if estimator != "k3":
        return per_token_kl_reference(logprobs, ref_logprobs, action_mask, estimator)
    x = (logprobs.float() - ref_logprobs.float()).clamp(-K3_CLAMP, K3_CLAMP).double()
    kl = (torch.expm1(-x) + x).float()
    return torch.where(action_mask.bool(), kl, 0.0)


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, action_mask: torch.Tensor,
                 estimator: str = "k1", *, backend: str = "auto") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate, `(B, T)` fp32, exactly 0 where the mask is 0.

    Same arguments as `rlhf_ds.rl.per_token_kl`; differentiable in `logprobs` and
    `ref_logprobs` on every backend. The torch path is the twin's elementwise formulas
    (there is no memory to save), with k3 evaluated accurately near 0 (as the kernel is).
    """
    _check(logprobs, ref_logprobs, action_mask, estimator)
    which = resolve(backend, logprobs.device)
    if which == "triton":
        kl, _ = _TritonKL.apply(logprobs, ref_logprobs, action_mask, logprobs, 0.0, estimator, False)
        return kl
    if which == "reference":
        return per_token_kl_reference(logprobs, ref_logprobs, action_mask, estimator)
    return _torch_per_token_kl(logprobs, ref_logprobs, action_mask, estimator)


def _torch_kl_shaped_rewards(scores, logprobs, ref_logprobs, action_mask, kl_coef, estimator):
    # As the reference, but the score lands through a scatter: no boolean indexing, so
    # no device-to-host synchronisation on GPU.
    kl = _torch_per_token_kl(logprobs, ref_logprobs, action_mask, estimator)
    rewards = kl * -float(kl_coef)
    last = last_action_index(action_mask)
    bonus = torch.where(last >= 0, scores.float(), 0.0)
    rewards = rewards.scatter_add(1, last.clamp(min=0).unsqueeze(1), bonus.unsqueeze(1))
    return rewards, kl


def kl_shaped_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      action_mask: torch.Tensor, kl_coef: float, estimator: str = "k1", *,
                      backend: str = "auto"):
    """Per-token rewards -kl_coef * KL_t, plus `scores` at each row's last response token.

    Args:
        scores: `(B,)` sequence scores; logprobs, ref_logprobs, action_mask: `(B, T)`.
        kl_coef: beta; estimator: "k1", "k2" or "k3".
        backend: "auto", "triton", "torch" or "reference".

    Returns:
        (rewards, kl): `(B, T)` fp32, 0 where the mask is 0; a row without response
        tokens gets no score. Differentiable on every backend.
    """
    _check(logprobs, ref_logprobs, action_mask, estimator, scores)
    which = resolve(backend, logprobs.device)
    if which == "reference":
        return kl_shaped_rewards_reference(scores, logprobs, ref_logprobs, action_mask, kl_coef, estimator)
    if which == "triton":
        kl, rewards = _TritonKL.apply(logprobs, ref_logprobs, action_mask, scores, float(kl_coef), estimator, True)
        return rewards, kl
    return _torch_kl_shaped_rewards(scores, logprobs, ref_logprobs, action_mask, kl_coef, estimator)


__all__ = ["per_token_kl", "kl_shaped_rewards", "per_token_kl_reference", "kl_shaped_rewards_reference"]
