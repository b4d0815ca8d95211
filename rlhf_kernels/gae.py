"""Generalized Advantage Estimation as a reverse scan, not a Python loop over time.

The reference (`rlhf_ds.rl.gae`, Schulman et al. 2016, eq. 16) walks t = T-1 .. 0:

    delta_t = r_t + gamma * nv_t - V_t          nv_t: V at the next masked-in position after t
    A_t     = delta_t + gamma * lam * na_t      na_t: A at the next masked-in position after t

with masked-out positions passed over (advantage and return 0, carries unchanged).
Both carries are first-order linear recurrences y_t = a_t * y_{t+1} + b_t, y_T = 0:

    next value (inclusive): a_t = 1 - m_t,              b_t = m_t * V_t;   nv_t = y_{t+1}
    running advantage:      a_t = m_t ? gamma*lam : 1,  b_t = m_t ? delta_t : 0

and affine maps compose associatively, (a1, b1) after (a2, b2) = (a1 a2, a1 b2 + b1)
(Blelloch 1990, "Prefix sums and their applications", section 1.4), so each is a
reverse associative scan. A masked-out position is the identity map (1, 0).

Triton: one program per row walks blocks of BLOCK_T from the end of the row to its
start, scanning each block with `tl.associative_scan(reverse=True)` and applying the
carry from the block after it, so any T works. Torch (CPU): a blocked scan, sequential
inside blocks of ~sqrt(T) but vectorised over all blocks and rows, a log-depth scan
over the block composites for the carries, and one pass to apply them: O(B T) work in
O(sqrt(T)) torch calls, all fp32 products of factors in [0, 1] (no cumprod underflow,
no division).
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Tuple

import torch

from rlhf_ds.rl import gae as gae_reference

from ._backend import HAS_TRITON, resolve, tl, triton

# Triton scan strategy: "reverse" = tl.associative_scan(reverse=True) on blocks loaded in
# time order; "flipped" = blocks loaded back to front and a forward scan (the same
# recurrence). "auto" uses "reverse" after a one-time self-check on each CUDA device and
# falls back to "flipped" if that check fails (reverse scans with non-commutative
# combines have had compiler bugs, e.g. triton-lang/triton#4362).
SCAN_MODE = "auto"
_scan_ok: Dict[Tuple[str, int], bool] = {}

# ----------------------------------------------------------------------------- Triton
if HAS_TRITON:

    @triton.jit
    def _compose_affine(a_later, b_later, a_cur, b_cur):
        # Scan accumulator = the composite of the later positions; the current (earlier)
        # position is applied after it: y -> a_cur * (a_later * y + b_later) + b_cur.
        return a_cur * a_later, a_cur * b_later + b_cur

    @triton.jit
    def _gae_kernel(
        r_ptr, v_ptr, m_ptr, adv_ptr, ret_ptr,
        T, s_r_b, s_r_t, s_v_b, s_v_t, s_m_b, s_m_t, gamma, gamma_lam,
        BLOCK_T: tl.constexpr, REVERSE_SCAN: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        r_row = r_ptr + row * s_r_b
        v_row = v_ptr + row * s_v_b
        m_row = m_ptr + row * s_m_b
        out_row = row * T
        idx = tl.arange(0, BLOCK_T)
        carry_nv = tl.full((), 0.0, tl.float32)   # nv at the first position of the later block
        carry_adv = tl.full((), 0.0, tl.float32)  # running advantage there
        n_blocks = tl.cdiv(T, BLOCK_T)
        for i in range(0, n_blocks):
            start = (n_blocks - 1 - i) * BLOCK_T
            if REVERSE_SCAN:
                t = start + idx
            else:
                t = start + (BLOCK_T - 1) - idx  # latest time first
            in_seq = t < T
            r = tl.load(r_row + t * s_r_t, mask=in_seq, other=0.0).to(tl.float32)
            v = tl.load(v_row + t * s_v_t, mask=in_seq, other=0.0).to(tl.float32)
            on = tl.load(m_row + t * s_m_t, mask=in_seq, other=0) != 0
            # The position after t (one block step further, still in cache) feeds nv_t.
            nxt = t + 1
            in_nxt = nxt < T
            v_nxt = tl.load(v_row + nxt * s_v_t, mask=in_nxt, other=0.0).to(tl.float32)
            on_nxt = tl.load(m_row + nxt * s_m_t, mask=in_nxt, other=0) != 0
            a_nv = tl.where(on_nxt, 0.0, 1.0)
            b_nv = tl.where(on_nxt, v_nxt, 0.0)
            a_nv, b_nv = tl.associative_scan((a_nv, b_nv), 0, _compose_affine, reverse=REVERSE_SCAN)
            nv = a_nv * carry_nv + b_nv
            delta = r + gamma * nv - v
            a_adv = tl.where(on, gamma_lam, 1.0)
            b_adv = tl.where(on, delta, 0.0)
            a_adv, b_adv = tl.associative_scan((a_adv, b_adv), 0, _compose_affine, reverse=REVERSE_SCAN)
            run = a_adv * carry_adv + b_adv
            adv = tl.where(on, run, 0.0)
            tl.store(adv_ptr + out_row + t, adv, mask=in_seq)
            tl.store(ret_ptr + out_row + t, tl.where(on, adv + v, 0.0), mask=in_seq)
            first = t == start
            carry_nv = tl.sum(tl.where(first, nv, 0.0), 0)
            carry_adv = tl.sum(tl.where(first, run, 0.0), 0)


def triton_gae(rewards, values, action_mask, gamma, lam, reverse_scan: bool = True,
               block_t: Optional[int] = None):
    """Host launcher: fp32 contiguous (advantages, returns), (B, T)."""
    B, T = rewards.shape
    adv = torch.empty((B, T), dtype=torch.float32, device=rewards.device)
    ret = torch.empty_like(adv)
    if B * T == 0:
        return adv, ret
    mask = action_mask.view(torch.uint8) if action_mask.dtype == torch.bool else action_mask
    block = block_t or max(16, min(triton.next_power_of_2(T), 1024))
    _gae_kernel[(B,)](
        rewards, values, mask, adv, ret, T,
        rewards.stride(0), rewards.stride(1), values.stride(0), values.stride(1), mask.stride(0), mask.stride(1),
        float(gamma), float(gamma) * float(lam), BLOCK_T=block, REVERSE_SCAN=reverse_scan,
        num_warps=4 if block <= 256 else 8)
    return adv, ret


def _reverse_scan_ok(device: torch.device) -> bool:
    """Once per CUDA device: does the compiled reverse scan agree with the torch path?"""
    key = (device.type, device.index if device.index is not None else torch.cuda.current_device())
    if key not in _scan_ok:
        gen = torch.Generator(device="cpu").manual_seed(1234)
        B, T = 3, 2500  # three blocks of 1024, the last one partial
        r = torch.randn(B, T, generator=gen)
        v = torch.randn(B, T, generator=gen)
        m = torch.rand(B, T, generator=gen) > 0.2
        m[1, 2000:] = False
        want = torch_gae(r, v, m, 0.99, 0.95)
        got = triton_gae(r.to(device), v.to(device), m.to(device), 0.99, 0.95, reverse_scan=True)
        ok = all(torch.allclose(g.cpu(), w, rtol=1e-4, atol=1e-4) for g, w in zip(got, want))
        if not ok:
            warnings.warn("tl.associative_scan(reverse=True) disagreed with the reference on this device; "
                          "rlhf_kernels.gae uses the flipped forward scan instead", RuntimeWarning)
        _scan_ok[key] = ok
    return _scan_ok[key]


# ------------------------------------------------------------------ memory-efficient torch
def _block_len(T: int) -> int:
    """Block length near sqrt(1.5 T) (balances in-block and across-block steps), preferring
    a divisor of T so that no padding is needed."""
    target = max(1, round(math.sqrt(1.5 * T)))
    for L in range(target, max(1, target // 2) - 1, -1):
        if T % L == 0:
            return L
    return target


class _Blocks:
    """(B, T) <-> (L, B, nc) "block-major" layout: position in block first, so that every
    step of the in-block scan reads and writes one contiguous (B, nc) slab."""

    def __init__(self, B: int, T: int, L: int, device):
        self.B, self.T, self.L, self.device = B, T, L, device
        self.nc = -(-T // L)

    def to_blocks(self, x: torch.Tensor, fill, dtype=torch.float32) -> torch.Tensor:
        B, T, L, nc = self.B, self.T, self.L, self.nc
        out = torch.empty((L, B, nc), dtype=dtype, device=self.device)
        view = out.permute(1, 2, 0)  # (B, nc, L) view of the block-major buffer
        full = (T // L) * L
        if full:
            view[:, :T // L].copy_(x[:, :full].reshape(B, T // L, L))
        if full < T:
            view[:, -1, :T - full].copy_(x[:, full:])
            view[:, -1, T - full:].fill_(fill)
        return out

    def from_blocks(self, y: torch.Tensor) -> torch.Tensor:
        B, T, L, nc = self.B, self.T, self.L, self.nc
        out = torch.empty((B, nc * L), dtype=y.dtype, device=self.device)
        out.view(B, nc, L).copy_(y.permute(1, 2, 0))
        return out if nc * L == T else out[:, :T].contiguous()


def _suffix_scan_blocks(A: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """In place on block-major (L, B, nc) fp32 tensors: Y becomes y with y_t = a_t y_{t+1} + b_t
    (y = 0 after the last position), A is used as scratch."""
    L = A.shape[0]
    As, Ys = A.unbind(0), Y.unbind(0)
    for s in range(L - 2, -1, -1):  # composites of each block's suffix, all blocks at once
        Ys[s].addcmul_(As[s], Ys[s + 1])
        As[s].mul_(As[s + 1])
    # The carry into block c is the scan of the whole-block composites (A[0], Y[0]) over
    # the blocks after c: a suffix scan over nc blocks, by doubling (log2(nc) steps).
    a, b = A[0], Y[0]
    k, nc = 1, a.shape[1]
    while k < nc:
        b = torch.cat([torch.addcmul(b[:, :-k], a[:, :-k], b[:, k:]), b[:, -k:]], dim=1)
        a = torch.cat([a[:, :-k] * a[:, k:], a[:, -k:]], dim=1)
        k *= 2
    carries = torch.nn.functional.pad(b[:, 1:], (0, 1))
    return Y.addcmul_(A, carries.unsqueeze(0))


def suffix_linear_scan(a: torch.Tensor, b: torch.Tensor, block: Optional[int] = None) -> torch.Tensor:
    """y with y_t = a_t * y_{t+1} + b_t and y_T = 0 along dim 1 of (B, T) tensors, in fp32."""
    B, T = a.shape
    if T == 0:
        return b.float().clone()
    lay = _Blocks(B, T, block or _block_len(T), a.device)
    return lay.from_blocks(_suffix_scan_blocks(lay.to_blocks(a, 1.0), lay.to_blocks(b, 0.0)))


def torch_gae(rewards, values, action_mask, gamma, lam, block: Optional[int] = None):
    B, T = rewards.shape
    if B * T == 0:
        z = torch.zeros((B, T), dtype=torch.float32, device=rewards.device)
        return z, z.clone()
    lay = _Blocks(B, T, block or _block_len(T), rewards.device)
    L, nc = lay.L, lay.nc
    on = lay.to_blocks(action_mask, False, dtype=torch.bool)
    off = ~on
    v = lay.to_blocks(values, 0.0)
    # delta_t = r_t + gamma * nv_t - v_t, where nv_t is V at the next masked-in position.
    delta = lay.to_blocks(rewards, 0.0).sub_(v)
    if _has_holes(action_mask):
        # nv_t = y_{t+1} with y_t = (1 - m_t) y_{t+1} + m_t V_t ("last valid value" scan)
        nv_incl = _suffix_scan_blocks(off.float(), v.masked_fill(off, 0.0))
    else:
        # one run of response tokens per row: the next valid position is simply t + 1
        nv_incl = v.masked_fill(off, 0.0)
    # shift by one position: in block-major layout, s -> s + 1, and block end -> next block start
    delta[:-1].add_(nv_incl[1:], alpha=gamma)
    delta[-1, :, :-1].add_(nv_incl[0, :, 1:], alpha=gamma)
    del nv_incl
    a = torch.full((L, B, nc), 1.0, dtype=torch.float32, device=rewards.device).masked_fill_(on, gamma * lam)
    adv = _suffix_scan_blocks(a, delta.masked_fill_(off, 0.0)).masked_fill_(off, 0.0)
    ret = (adv + v).masked_fill_(off, 0.0)
    return lay.from_blocks(adv), lay.from_blocks(ret)


def _has_holes(action_mask: torch.Tensor) -> bool:
    """Whether some row's masked-in positions are not one contiguous run (CPU: no sync cost)."""
    m = action_mask.bool()
    starts = (m[:, 1:] & ~m[:, :-1]).sum(1) + m[:, 0].long()
    return bool((starts > 1).any())


# --------------------------------------------------------------------------- public API
def gae(rewards: torch.Tensor, values: torch.Tensor, action_mask: torch.Tensor, gamma: float, lam: float,
        *, backend: str = "auto"):
    """Advantages and returns, with the mask semantics of `rlhf_ds.rl.gae`.

    Args:
        rewards, values, action_mask: `(B, T)` (any float dtype; any mask dtype).
        gamma, lam: discount and GAE lambda in [0, 1].
        backend: "auto", "triton", "torch" or "reference" (the Python loop).

    Returns:
        (advantages, returns): `(B, T)` fp32, exactly 0 where the mask is 0. The scans
        work in place and are not differentiable: inputs that require grad (with grad
        mode on; GAE normally runs under no_grad) take the reference loop.
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    if rewards.dim() != 2 or rewards.shape != values.shape or rewards.shape != action_mask.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and action_mask "
                         f"{tuple(action_mask.shape)} must all be the same (B, T)")
    which = resolve(backend, rewards.device)
    needs_grad = torch.is_grad_enabled() and (rewards.requires_grad or values.requires_grad)
    if which == "reference" or needs_grad:
        return gae_reference(rewards, values, action_mask, gamma, lam)
    if which == "triton":
        if SCAN_MODE == "auto":
            reverse = rewards.device.type != "cuda" or _reverse_scan_ok(rewards.device)
        else:
            reverse = SCAN_MODE == "reverse"
        return triton_gae(rewards, values, action_mask, gamma, lam, reverse_scan=reverse)
    return torch_gae(rewards, values, action_mask, gamma, lam)


__all__ = ["gae", "gae_reference"]
