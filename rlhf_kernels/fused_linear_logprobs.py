"""The LM head and the log-prob gather in one op: `(N, V)` logits are never materialised.

    logprobs = gather_logprobs(hidden @ weight.T, labels, temperature)

Rows are processed in chunks of C: a `(C, V)` block of logits is computed with one GEMM,
reduced to per-row log-probs (and logsumexp, entropy) by the fused kernel of
`gather_logprobs`, and dropped. The backward recomputes each chunk's logits, turns
them into d(loss)/d(logits) in place (the same buffer), and feeds two GEMMs:
grad_hidden[chunk] = dlogits @ weight and grad_weight += dlogits.T @ hidden[chunk]
(accumulated in fp32). Peak extra memory is O(C x V) plus the fp32 weight-gradient
accumulator, instead of several N x V tensors. The chunking follows the fused
linear-cross-entropy idea of Liger-Kernel (Hsu et al. 2024, arXiv:2410.10989), here
for per-token log-probs, whose upstream gradient is only known in the backward.

There is no separate Triton kernel in this file: the GEMMs belong to cuBLAS and the
row reduction is `gather_logprobs`' kernel (`triton_logprobs_fwd` / `_bwd`).
"""
from __future__ import annotations

from typing import Optional

import torch

from rlhf_ds.rl import IGNORE_INDEX
from rlhf_ds.rl import gather_logprobs as _gather_logprobs_reference

from ._backend import resolve
from .gather_logprobs import (
    chunk_grad,
    chunk_stats,
    entropy_reference,
    torch_chunk_rows,
    triton_logprobs_bwd,
    triton_logprobs_fwd,
)

# Triton path: a chunk of logits (in the hidden dtype) is at most this big. Large enough
# that each chunk GEMM runs near peak, small next to the N x V logits it replaces.
GPU_CHUNK_BYTES = 256 * 2**20

_out_dtype_mm_works: Optional[bool] = None  # learnt on first use on CUDA


def _chunk_rows(n: int, v: int, elem_size: int, on_gpu: bool) -> int:
    if on_gpu:
        rows = GPU_CHUNK_BYTES // (v * elem_size)
    else:  # the torch path makes ~2 fp32 copies of a chunk: one budget (read at call time) for both ops
        rows = torch_chunk_rows(v)
    rows = max(1, min(n, rows))
    return 1 << (rows.bit_length() - 1) if rows < n else rows  # power of two unless all of N


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b without an fp32 copy of a or b when the device allows it."""
    global _out_dtype_mm_works
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if a.is_cuda and _out_dtype_mm_works is not False:
        try:  # bf16/fp16 inputs, fp32 accumulate and output (cuBLAS; torch >= 2.8)
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            _out_dtype_mm_works = True
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _out_dtype_mm_works = False
    acc.add_(torch.mm(a, b))  # a low-precision (V, H) temporary, then an fp32 add


class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, inv_temp, ignore_index, with_entropy, chunk_rows, use_triton):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device) if with_entropy else None
        for s in range(0, n, chunk_rows):
            e = min(s + chunk_rows, n)
            logits = torch.mm(hidden[s:e], weight.t())
            if use_triton:
                lp_c, lse_c, ent_c = triton_logprobs_fwd(logits, labels[s:e], inv_temp, ignore_index, with_entropy)
            else:
                lp_c, lse_c, ent_c = chunk_stats(logits, labels[s:e], inv_temp, ignore_index, with_entropy)
            logp[s:e], lse[s:e] = lp_c, lse_c
            if with_entropy:
                ent[s:e] = ent_c
            del logits
        ctx.save_for_backward(hidden, weight, labels, lse, ent)
        ctx.cfg = (inv_temp, ignore_index, chunk_rows, use_triton)
        if not with_entropy:
            ent = logp.new_empty(0)
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, labels, lse, ent = ctx.saved_tensors
        inv_temp, ignore_index, chunk_rows, use_triton = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return (None,) * 8
        if ent is None:
            g_ent = None
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, n, chunk_rows):
            e = min(s + chunk_rows, n)
            h = hidden[s:e]
            logits = torch.mm(h, weight.t())
            ent_c = None if ent is None else ent[s:e]
            ge_c = None if g_ent is None else g_ent[s:e]
            if use_triton:  # overwrite the logits chunk with its gradient
                dlogits = triton_logprobs_bwd(logits, labels[s:e], lse[s:e], ent_c, g_logp[s:e], ge_c,
                                              inv_temp, ignore_index, out=logits)
            else:  # also into the logits chunk (through an fp32 temporary when it is 16-bit)
                dlogits = chunk_grad(logits, labels[s:e], lse[s:e], ent_c, g_logp[s:e], ge_c,
                                     inv_temp, ignore_index, out=logits)
            del logits
            if need_h:
                torch.mm(dlogits, weight, out=grad_h[s:e])
            if need_w:
                _accumulate_mm(grad_w, dlogits.t(), h)
            del dlogits
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None, None, None


def fused_linear_logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                    temperature: float = 1.0, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The plain twin: materialise `hidden @ weight.T`, then `rlhf_ds.rl.gather_logprobs`."""
    return _gather_logprobs_reference(hidden @ weight.t(), labels, temperature, ignore_index)


def fused_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          temperature: float = 1.0, ignore_index: int = IGNORE_INDEX, *,
                          return_entropy: bool = False, chunk_size: Optional[int] = None,
                          backend: str = "auto"):
    """log softmax((hidden @ weight.T) / temperature)[label], chunked over rows.

    Args:
        hidden: `(B, T, H)` or `(N, H)` final hidden states (fp32/bf16/fp16).
        weight: `(V, H)` LM-head weight (same dtype as `hidden`; no bias).
        labels: `(B, T)` or `(N,)` token ids; `ignore_index` positions give 0.
        temperature: divide the logits by this before the softmax.
        return_entropy: also return the entropy of each row's distribution.
        chunk_size: rows per chunk (default: a chunk of logits of about 256 MiB on the
            Triton path, the torch-path budget of `gather_logprobs` otherwise).
        backend: "auto", "triton", "torch" or "reference".

    Returns:
        logprobs `(B, T)` / `(N,)` fp32, or (logprobs, entropy). Differentiable with
        respect to `hidden` and `weight`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.dim() not in (2, 3) or hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be (N, H) or (B, T, H) and match "
                         f"labels {tuple(labels.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} must be (V, H) with H = {hidden.shape[-1]}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    which = resolve(backend, hidden.device)
    if which == "reference":
        logits = hidden @ weight.t()     # once, for the log-probs and the entropy
        logp = _gather_logprobs_reference(logits, labels, temperature, ignore_index)
        return (logp, entropy_reference(logits, labels, temperature, ignore_index)) if return_entropy else logp
    h2 = hidden.reshape(-1, hidden.shape[-1])
    n, v = h2.shape[0], weight.shape[0]
    use_triton = which == "triton"
    rows = chunk_size or _chunk_rows(n, v, h2.element_size(), use_triton)
    logp, ent = _FusedLinearLogprobs.apply(h2, weight, labels.reshape(-1).contiguous(), 1.0 / float(temperature),
                                           int(ignore_index), bool(return_entropy), max(1, min(rows, max(n, 1))),
                                           use_triton)
    logp = logp.view(labels.shape)
    return (logp, ent.view(labels.shape)) if return_entropy else logp


__all__ = ["fused_linear_logprobs", "fused_linear_logprobs_reference"]
