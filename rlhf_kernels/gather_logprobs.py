"""Log-probabilities of chosen tokens (and optionally the entropy) without an N x V temporary.

    logprobs[n] = log softmax(logits[n] / temperature)[labels[n]]
    entropy[n]  = -sum_v p[n, v] log p[n, v]

The Triton kernel reads each row of the `(B, T, V)` logits once, in place through its
strides (so `logits[:, :-1]` costs no copy), keeping a running max m, a running sum
s = sum exp(z - m) and, for the entropy, w = sum exp(z - m) z: the online softmax of
Milakov & Gimelshein 2018, "Online normalizer calculation for softmax". Then
logsumexp = m + log s and entropy = logsumexp - w / s. Only N floats per output are
written; the backward recomputes softmax from the saved logsumexp:

    d logprob / d z_v = [v = label] - p_v        d entropy / d z_v = -p_v (log p_v + entropy)

and z = logits / temperature. On CPU the torch path does the same row chunk by row
chunk, so its extra memory is O(chunk x V), not O(N x V), forward and backward.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from rlhf_ds.rl import IGNORE_INDEX, entropy_from_logits
from rlhf_ds.rl import gather_logprobs as gather_logprobs_reference

from ._backend import HAS_TRITON, resolve, tl, triton

# Torch path: rows per chunk are chosen so one fp32 chunk of logits is about this big.
# Tests lower it to force many chunks on small shapes.
TORCH_CHUNK_BYTES = 16 * 2**20
# Triton path: an upper bound on the vocabulary block (None: 16 KiB of logits). Tests
# lower it so that small vocabularies take several blocks of the online softmax.
TRITON_MAX_BLOCK_V = None


# ----------------------------------------------------------------------------- Triton
if HAS_TRITON:

    @triton.jit
    def _logprobs_fwd_kernel(
        logits_ptr, labels_ptr, logp_ptr, lse_ptr, ent_ptr,
        T, stride_b, stride_t, stride_v, V, inv_temp, ignore_index,
        BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr, WIDE_COLS: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        # Row n of the flattened (B, T) grid lives at b * stride_b + t * stride_t: int64,
        # because N * V passes 2**31 at realistic sizes.
        row_ptr = logits_ptr + (row // T) * stride_b + (row % T) * stride_t
        label = tl.load(labels_ptr + row).to(tl.int64)
        valid = label != ignore_index
        # Ignored rows (prompt, padding) skip the whole vocabulary: no reads at all.
        v_stop = tl.where(valid, V, 0)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.full((), 0.0, tl.float32)
        w = tl.full((), 0.0, tl.float32)
        for start in range(0, v_stop, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            in_row = cols < V
            if WIDE_COLS:
                offs = cols.to(tl.int64) * stride_v
            else:
                offs = cols * stride_v
            x = tl.load(row_ptr + offs, mask=in_row, other=float("-inf"))
            z = x.to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(z, 0))
            # while every logit so far is -inf (a masked-out stretch of the vocabulary),
            # rescale by exp(-inf - 0) = 0 rather than exp(-inf - -inf) = NaN
            m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)
            alpha = tl.exp(m - m_ref)
            e = tl.exp(z - m_ref)  # exactly 0 on the padding lanes (z = -inf)
            s = s * alpha + tl.sum(e, 0)
            if WITH_ENTROPY:
                # e = 0 where z = -inf (padding lanes, banned tokens): 0 * -inf must not be NaN
                w = w * alpha + tl.sum(e * tl.where(e > 0.0, z, 0.0), 0)
            m = m_new
        s_safe = tl.where(valid, s, 1.0)
        lse = tl.where(valid, m, 0.0) + tl.log(s_safe)
        safe_label = tl.where(valid, label, 0)
        z_label = tl.load(row_ptr + safe_label * stride_v, mask=valid, other=0.0).to(tl.float32) * inv_temp
        tl.store(logp_ptr + row, tl.where(valid, z_label - lse, 0.0))
        tl.store(lse_ptr + row, lse)
        if WITH_ENTROPY:
            tl.store(ent_ptr + row, tl.where(valid, lse - w / s_safe, 0.0))

    @triton.jit
    def _logprobs_bwd_kernel(
        logits_ptr, labels_ptr, lse_ptr, ent_ptr, g_logp_ptr, g_ent_ptr, grad_ptr,
        T, stride_b, stride_t, stride_v, V, inv_temp, ignore_index,
        BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr, WIDE_COLS: tl.constexpr,
    ):
        # grad_ptr is a contiguous (N, V) buffer; it may be the logits buffer itself
        # (fused_linear_logprobs overwrites its chunk of logits in place): every element
        # is read before it is written, by the same program.
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + (row // T) * stride_b + (row % T) * stride_t
        out_ptr = grad_ptr + row * V
        label = tl.load(labels_ptr + row).to(tl.int64)
        valid = label != ignore_index
        lse = tl.load(lse_ptr + row)
        g = tl.where(valid, tl.load(g_logp_ptr + row), 0.0)
        if WITH_ENTROPY:
            g_ent = tl.where(valid, tl.load(g_ent_ptr + row), 0.0)
            ent = tl.load(ent_ptr + row)
        v_read = tl.where(valid, V, 0)  # ignored rows read nothing and write zeros
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            in_row = cols < V
            if WIDE_COLS:
                offs = cols.to(tl.int64) * stride_v
            else:
                offs = cols * stride_v
            x = tl.load(row_ptr + offs, mask=cols < v_read, other=0.0)
            logp = x.to(tl.float32) * inv_temp - lse
            p = tl.exp(logp)
            if WITH_ENTROPY:
                dz = -p * (g + g_ent * (tl.where(p > 0.0, logp, 0.0) + ent))
            else:
                dz = -p * g
            dz = tl.where(cols == label, dz + g, dz)
            dz = tl.where(valid, dz * inv_temp, 0.0)
            tl.store(out_ptr + cols, dz.to(grad_ptr.dtype.element_ty), mask=in_row)


def _launch_config(V: int, elem_size: int) -> Tuple[int, int]:
    """(BLOCK_V, num_warps): 8192 16-bit or 4096 32-bit elements (16 KiB) per step."""
    cap = 8192 if elem_size <= 2 else 4096
    if TRITON_MAX_BLOCK_V:
        cap = min(cap, TRITON_MAX_BLOCK_V)
    block = max(16, min(triton.next_power_of_2(V), cap))  # >= 16: no degenerate 1-wide blocks
    return block, (16 if block >= 8192 else 8 if block >= 2048 else 4)


def _as_3d(logits: torch.Tensor) -> torch.Tensor:
    """A (B, T, V) view of (N, V) or (B, T, V) logits, without a copy."""
    if logits.dim() == 2:
        return logits.unsqueeze(0)
    if logits.dim() == 3:
        return logits
    raise ValueError(f"logits must be (N, V) or (B, T, V), got {tuple(logits.shape)}")


def triton_logprobs_fwd(logits: torch.Tensor, labels: torch.Tensor, inv_temp: float, ignore_index: int,
                        with_entropy: bool):
    """Host launcher. logits (N, V) or (B, T, V), any strides; labels flat (N,).

    Returns flat fp32 (logprobs, logsumexp, entropy-or-None), each (N,).
    """
    x = _as_3d(logits)
    B, T, V = x.shape
    n = B * T
    logp = torch.empty(n, dtype=torch.float32, device=x.device)
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    ent = torch.empty(n, dtype=torch.float32, device=x.device) if with_entropy else lse
    if n == 0:
        return logp, lse, (ent if with_entropy else None)
    block, warps = _launch_config(V, x.element_size())
    _logprobs_fwd_kernel[(n,)](
        x, labels, logp, lse, ent, T, x.stride(0), x.stride(1), x.stride(2), V, float(inv_temp),
        int(ignore_index), BLOCK_V=block, WITH_ENTROPY=with_entropy,
        WIDE_COLS=(V - 1) * abs(x.stride(2)) >= 2**31, num_warps=warps)
    return logp, lse, (ent if with_entropy else None)


def triton_logprobs_bwd(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor,
                        ent: Optional[torch.Tensor], g_logp: torch.Tensor, g_ent: Optional[torch.Tensor],
                        inv_temp: float, ignore_index: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """d(loss)/d(logits) as a contiguous tensor shaped like `logits` (or written into `out`)."""
    x = _as_3d(logits)
    B, T, V = x.shape
    if out is None:
        out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if B * T == 0:
        return out
    with_entropy = ent is not None and g_ent is not None
    block, warps = _launch_config(V, x.element_size())
    g_logp = g_logp.reshape(-1).float().contiguous()
    g_ent = g_ent.reshape(-1).float().contiguous() if with_entropy else g_logp
    _logprobs_bwd_kernel[(B * T,)](
        x, labels, lse, ent if with_entropy else lse, g_logp, g_ent, out,
        T, x.stride(0), x.stride(1), x.stride(2), V, float(inv_temp), int(ignore_index),
        BLOCK_V=block, WITH_ENTROPY=with_entropy,
        WIDE_COLS=(V - 1) * abs(x.stride(2)) >= 2**31, num_warps=warps)
    return out


class _TritonGatherLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, inv_temp, ignore_index, with_entropy):
        logp, lse, ent = triton_logprobs_fwd(logits, labels, inv_temp, ignore_index, with_entropy)
        ctx.save_for_backward(logits, labels, lse, ent if with_entropy else None)
        ctx.inv_temp, ctx.ignore_index = inv_temp, ignore_index
        if not with_entropy:
            ent = logp.new_empty(0)
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, labels, lse, ent = ctx.saved_tensors
        if g_logp is None:
            g_logp = torch.zeros_like(lse)
        grad = triton_logprobs_bwd(logits, labels, lse, ent, g_logp, g_ent if ent is not None else None,
                                   ctx.inv_temp, ctx.ignore_index)
        return grad, None, None, None, None


# ------------------------------------------------------------------ memory-efficient torch
def _row_chunks(logits: torch.Tensor, chunk_rows: int) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield (first flat row, (r, V) view) over the rows of (N, V) / (B, T, V) logits, no copies."""
    V = logits.shape[-1]
    try:
        flat = logits.view(-1, V)
    except RuntimeError:  # e.g. logits[:, :-1] of a (B, T+1, V) tensor: go batch row by batch row
        flat = None
    if flat is not None:
        for start in range(0, flat.shape[0], chunk_rows):
            yield start, flat[start:start + chunk_rows]
        return
    T = logits.shape[1]
    for b in range(logits.shape[0]):
        for t0 in range(0, T, chunk_rows):
            yield b * T + t0, logits[b, t0:t0 + chunk_rows]


def torch_chunk_rows(V: int, budget_bytes: Optional[int] = None) -> int:
    budget = TORCH_CHUNK_BYTES if budget_bytes is None else budget_bytes
    return max(1, budget // (4 * max(V, 1)))


def _scaled_fp32(x: torch.Tensor, inv_temp: float, writable: bool) -> torch.Tensor:
    """x / temperature in fp32; a fresh tensor when `writable` (never the caller's tensor)."""
    z = x.float()
    if z is x:  # fp32 input: .float() aliased it
        return z * inv_temp if (writable or inv_temp != 1.0) else z
    return z.mul_(inv_temp) if inv_temp != 1.0 else z


def chunk_stats(x: torch.Tensor, labels: torch.Tensor, inv_temp: float, ignore_index: int, with_entropy: bool):
    """Torch math for one (r, V) chunk: fp32 (logprobs, logsumexp, entropy-or-None), each (r,).

    One fused log_softmax per chunk (ATen's vectorised kernel beats a composite
    logsumexp). The logsumexp is read back at the row's argmax, where
    log_softmax = (z - max) - log(sum) has z - max = 0 exactly, so no precision is lost.
    """
    z = _scaled_fp32(x, inv_temp, writable=False)
    logp_all = torch.log_softmax(z, dim=-1)
    top = z.argmax(dim=-1, keepdim=True)
    lse = (z.gather(-1, top) - logp_all.gather(-1, top)).squeeze(-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long().unsqueeze(-1)
    logp = torch.where(valid, logp_all.gather(-1, safe).squeeze(-1), 0.0)
    ent = None
    if with_entropy:
        # -sum_v p_v log p_v in the log_softmax buffer; 0 * -inf (a -inf logit) counts as 0
        plogp = logp_all.exp().mul_(logp_all).nan_to_num_(nan=0.0)
        ent = torch.where(valid, -plogp.sum(-1), 0.0)
    return logp, lse, ent


def chunk_grad(x: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, ent: Optional[torch.Tensor],
               g_logp: torch.Tensor, g_ent: Optional[torch.Tensor], inv_temp: float, ignore_index: int,
               out: Optional[torch.Tensor] = None):
    """Torch math for one (r, V) chunk: d(loss)/d(logits), (r, V), in fp32 (or written into
    `out` when given; an fp32 `out` is used as the working buffer, saving a copy)."""
    valid = labels != ignore_index
    # the 1 / temperature of dz/dlogits folded into the per-row factors
    g = torch.where(valid, g_logp.float(), 0.0) * inv_temp
    work = out if (out is not None and out.dtype == torch.float32) else None
    if work is not None:  # (out may be x itself: fused_linear_logprobs reuses its logits chunk)
        if inv_temp != 1.0:
            logp = torch.mul(x, inv_temp, out=work)
        else:
            logp = work if work.data_ptr() == x.data_ptr() else work.copy_(x)
    else:
        logp = _scaled_fp32(x, inv_temp, writable=True)
    logp.sub_(lse.unsqueeze(-1))
    if ent is not None and g_ent is not None:
        ge = torch.where(valid, g_ent.float(), 0.0) * inv_temp
        p = logp.exp()
        logp.clamp_(min=-1e30)  # -inf logits: keep 0 * (log p + H) finite
        # -p (g + ge (log p + H)), built in place in the logp buffer
        dz = logp.add_(ent.unsqueeze(-1)).mul_(ge.unsqueeze(-1)).add_(g.unsqueeze(-1)).mul_(p).neg_()
    else:
        dz = logp.exp_().mul_(-g.unsqueeze(-1))  # -p g
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    dz.scatter_add_(-1, safe.unsqueeze(-1), g.unsqueeze(-1))
    if out is not None and dz is not out:
        out.copy_(dz)
        return out
    return dz


def torch_logprobs_fwd(logits, labels_flat, inv_temp, ignore_index, with_entropy, chunk_rows):
    n = labels_flat.numel()
    logp = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    ent = torch.empty(n, dtype=torch.float32, device=logits.device) if with_entropy else None
    for start, x in _row_chunks(logits, chunk_rows):
        stop = start + x.shape[0]
        lp_c, lse_c, ent_c = chunk_stats(x, labels_flat[start:stop], inv_temp, ignore_index, with_entropy)
        logp[start:stop], lse[start:stop] = lp_c, lse_c
        if with_entropy:
            ent[start:stop] = ent_c
    return logp, lse, ent


class _TorchGatherLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, inv_temp, ignore_index, with_entropy, chunk_rows):
        logp, lse, ent = torch_logprobs_fwd(logits, labels, inv_temp, ignore_index, with_entropy, chunk_rows)
        ctx.save_for_backward(logits, labels, lse, ent)
        ctx.inv_temp, ctx.ignore_index, ctx.chunk_rows = inv_temp, ignore_index, chunk_rows
        if not with_entropy:
            ent = logp.new_empty(0)
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, labels, lse, ent = ctx.saved_tensors
        if g_logp is None:
            g_logp = torch.zeros_like(lse)
        g_logp = g_logp.reshape(-1)
        g_ent = g_ent.reshape(-1) if (g_ent is not None and ent is not None) else None
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        flat_grad = grad.view(-1, logits.shape[-1])
        for start, x in _row_chunks(logits, ctx.chunk_rows):
            stop = start + x.shape[0]
            chunk_grad(x, labels[start:stop], lse[start:stop], None if ent is None else ent[start:stop],
                       g_logp[start:stop], None if g_ent is None else g_ent[start:stop],
                       ctx.inv_temp, ctx.ignore_index, out=flat_grad[start:stop])
        return grad, None, None, None, None, None


# --------------------------------------------------------------------------- public API
def _check(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() not in (2, 3) or logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be (N, V) or (B, T, V) and match "
                         f"labels {tuple(labels.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")


def entropy_reference(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Plain entropy of softmax(logits / temperature), 0 where labels == ignore_index."""
    return entropy_from_logits(logits, temperature).masked_fill(labels == ignore_index, 0.0)


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                    ignore_index: int = IGNORE_INDEX, *, return_entropy: bool = False,
                    backend: str = "auto"):
    """log softmax(logits / temperature)[label] at every position, without an N x V temporary.

    Args:
        logits: `(B, T, V)` or `(N, V)`, fp32/bf16/fp16, any strides (a view such as
            `logits[:, :-1]` is read in place).
        labels: `(B, T)` or `(N,)` token ids in [0, V); `ignore_index` positions give 0
            (and 0 entropy, and no gradient).
        temperature: divide the logits by this before the softmax.
        return_entropy: also return the entropy of softmax(logits / temperature).
        backend: "auto", "triton", "torch" or "reference" (see `rlhf_kernels._backend`).

    Returns:
        logprobs `(B, T)` / `(N,)` fp32 (<= 0), or (logprobs, entropy) with
        `return_entropy`. Differentiable with respect to `logits`.
    """
    _check(logits, labels, temperature)
    which = resolve(backend, logits.device)
    if which == "reference":
        logp = gather_logprobs_reference(logits, labels, temperature, ignore_index)
        if return_entropy:
            return logp, entropy_reference(logits, labels, temperature, ignore_index)
        return logp
    labels_flat = labels.reshape(-1)
    inv_temp = 1.0 / float(temperature)
    if which == "triton":
        logp, ent = _TritonGatherLogprobs.apply(logits, labels_flat.contiguous(), inv_temp, int(ignore_index),
                                                bool(return_entropy))
    else:
        logp, ent = _TorchGatherLogprobs.apply(logits, labels_flat, inv_temp, int(ignore_index),
                                               bool(return_entropy), torch_chunk_rows(logits.shape[-1]))
    logp = logp.view(labels.shape)
    return (logp, ent.view(labels.shape)) if return_entropy else logp


__all__ = ["gather_logprobs", "gather_logprobs_reference", "entropy_reference"]
