"""The loss-averaging convention: divide by a GLOBAL count, never by a local one.

A token-level loss is `sum(per_token_loss * mask) / num_tokens`, where `num_tokens`
is the number of response tokens in the whole optimizer step: all ranks, all
micro-batches. Each rank then back-propagates its share of one global mean, and
summing the gradients (what data parallelism and gradient accumulation do) gives
exactly the gradient of the full batch, however the batch was split. Averaging each
micro-batch by its own count instead weights a token of a short micro-batch more
than one of a long micro-batch (the gradient-accumulation loss bug that Hugging Face
transformers fixed in late 2024 by passing the global `num_items_in_batch`).

When the count is omitted, the local count is used: right for a batch processed in
one piece. Sequence-level losses (ranking, DPO) follow the same rule with
`num_sequences`, `num_pairs` or `num_groups`.

`aggregate_loss` names the three ways RL recipes reduce a per-token policy loss, each with global
counts: a token mean (PPO, DAPO's token-level loss), a mean over sequences of each sequence's token
mean (GRPO as published, GSPO), and Dr. GRPO's sum over tokens divided by a constant.
"""
from typing import Optional

import torch

from ._checks import Count, check_count, check_same_shape
from .masked import masked_sum


def _safe_denominator(count: Count, like: torch.Tensor) -> torch.Tensor:
    # A count of 0 can only come with an all-zero numerator (no token anywhere).
    # Clamping to the smallest positive float turns 0/0 into 0 (and a zero gradient)
    # instead of NaN, without a host sync and without changing any real count.
    if isinstance(count, torch.Tensor) and count.numel() != 1:
        raise ValueError(f"a count must be a number or a 0-d tensor, got shape {tuple(count.shape)}")
    count = torch.as_tensor(count, dtype=like.dtype, device=like.device).reshape(())
    return count.clamp(min=torch.finfo(like.dtype).tiny)


def token_mean(per_token: torch.Tensor, mask: torch.Tensor,
               num_tokens: Optional[Count] = None) -> torch.Tensor:
    """`sum(per_token * mask) / num_tokens`: the token-mean used by every token-level loss.

    Args:
        per_token: `(B, T)` per-token values (losses, entropies).
        mask: `(B, T)` 1 on the tokens that count (`action_mask`).
        num_tokens: the global count of counted tokens over all ranks and micro-batches
            of the optimizer step (a number or a 0-d tensor); default `mask.sum()`.

    Returns:
        0-d fp32 tensor (fp64 if `per_token` is fp64); 0 when there is no token.
    """
    check_same_shape(per_token=per_token, mask=mask)
    check_count("num_tokens", num_tokens)
    total = masked_sum(per_token, mask)
    count = mask.bool().sum() if num_tokens is None else num_tokens
    return total / _safe_denominator(count, total)


def sequence_mean(per_sequence: torch.Tensor, num_sequences: Optional[Count] = None) -> torch.Tensor:
    """`sum(per_sequence) / num_sequences`: the mean used by sequence-level losses.

    Args:
        per_sequence: `(B,)` one value per sequence, pair or group.
        num_sequences: the global count over all ranks and micro-batches of the
            optimizer step; default `B`.

    Returns:
        0-d fp32 tensor (fp64 if `per_sequence` is fp64); 0 when `B` is 0.
    """
    if per_sequence.dim() != 1:
        raise ValueError(f"per_sequence must be (B,), got shape {tuple(per_sequence.shape)}")
    check_count("num_sequences", num_sequences)
    per_sequence = per_sequence.to(torch.promote_types(per_sequence.dtype, torch.float32))
    count = per_sequence.shape[0] if num_sequences is None else num_sequences
    return per_sequence.sum() / _safe_denominator(count, per_sequence)


LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str = "token_mean",
                   num_tokens: Optional[Count] = None, num_sequences: Optional[Count] = None,
                   max_length: Optional[int] = None) -> torch.Tensor:
    """Reduce a `(B, T)` per-token loss to the step's loss, with global counts.

    - `token_mean`: `sum_it l_it / num_tokens` (every token weighs the same; DAPO, Yu et al. 2025,
      section 3.3, token-level policy gradient loss).
    - `seq_mean_token_mean`: `sum_i (sum_t l_it / n_i) / num_sequences` (every sequence weighs the
      same: GRPO, Shao et al. 2024, eq. 3; GSPO's sequence objective).
    - `seq_mean_token_sum_norm`: `sum_it l_it / (num_sequences * max_length)`: a constant divisor, so
      no length bias (Dr. GRPO, Liu et al. 2025, section 3.1; `max_length` is the generation limit).

    `num_sequences` counts the rows with at least one counted token, over all ranks and
    micro-batches (default: this call's); `num_tokens` as in `token_mean`.

    Returns:
        0-d fp32 tensor (fp64 if `per_token` is fp64); 0 when nothing is counted.
    """
    check_same_shape(per_token=per_token, mask=mask)
    if aggregation == "token_mean":
        return token_mean(per_token, mask, num_tokens)
    rows = mask.bool().any(dim=1)
    count = rows.sum() if num_sequences is None else num_sequences
    check_count("num_sequences", num_sequences)
    if aggregation == "seq_mean_token_mean":
        per_sequence = masked_sum(per_token, mask, dim=1) / mask.bool().sum(dim=1).clamp(min=1)
        return per_sequence.sum() / _safe_denominator(count, per_sequence)
    if aggregation == "seq_mean_token_sum_norm":
        if not max_length or max_length < 1:
            raise ValueError(f"seq_mean_token_sum_norm needs max_length >= 1 (the constant divisor), got {max_length}")
        total = masked_sum(per_token, mask)
        return total / (_safe_denominator(count, total) * float(max_length))
    raise ValueError(f"unknown loss aggregation {aggregation!r}; allowed: {', '.join(LOSS_AGGREGATIONS)}")
