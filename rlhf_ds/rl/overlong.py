"""DAPO's soft overlong punishment.

Source: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", eq. 13:
with L_max the generation limit and L_cache the buffer before it,
    R_length(y) = 0                                   if |y| <= L_max - L_cache
                = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                = -1                                  if |y| > L_max
added to the task reward, so a response is pushed away from the limit before it is cut.
"""
import torch


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, scale: float = 1.0) -> torch.Tensor:
    """`(B,)` fp32 penalty (<= 0) for responses of `lengths` tokens; `scale` multiplies it.

    Args:
        lengths: `(B,)` response lengths in tokens (EOS included).
        max_length: L_max, the most tokens a response may have (`generation.max_new_tokens`).
        buffer: L_cache >= 1, the tokens before L_max over which the penalty grows from 0 to -1.
        scale: the penalty's size at L_max.
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be (B,), got shape {tuple(lengths.shape)}")
    if not 1 <= buffer <= max_length:
        raise ValueError(f"buffer must be in [1, max_length={max_length}], got {buffer}")
    start = max_length - buffer
    over = (lengths.float() - start).clamp(min=0.0)
    return -scale * (over / buffer).clamp(max=1.0)
