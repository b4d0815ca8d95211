"""Per-token log-probabilities of chosen tokens: the plain reference.

The fused Triton kernel and the chunked CPU path in `rlhf_kernels.gather_logprobs`
must agree with this function; it materialises the full log-softmax on purpose.
"""
import torch

IGNORE_INDEX = -100


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """log softmax(logits / temperature)[label] for every position.

    Args:
        logits: `(B, T, V)` or `(N, V)`, any float dtype; computed in fp32.
        labels: `(B, T)` or `(N,)` token ids; positions equal to `ignore_index` give 0.
        temperature: the sampling temperature the tokens were drawn with (PPO must
            score tokens under the same distribution it sampled them from).

    Returns:
        `(B, T)` or `(N,)` fp32 log-probabilities (<= 0).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    ignored = labels == ignore_index
    safe = labels.masked_fill(ignored, 0).long()
    out = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return out.masked_fill(ignored, 0.0)
