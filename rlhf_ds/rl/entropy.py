"""Entropy of the next-token distribution from logits.

H(p) = -sum_v p_v log p_v with log p = log_softmax(z), the entropy bonus S[pi] of
Schulman et al. 2017 ("Proximal Policy Optimization Algorithms", eq. 9).
"""
import torch


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position entropy of softmax(logits / temperature), in nats.

    Computed in fp32 as -sum p log p with log p from a log-sum-exp (`log_softmax`),
    so large logits do not overflow and each term is small (no cancellation of the
    kind `logsumexp(z) - sum p z` suffers at large |z|). Logits of -inf (tokens
    banned by top-k / top-p filtering) contribute exactly 0 and no NaN gradient.

    Args:
        logits: `(B, T, V)` (any leading dims), any float dtype.
        temperature: the sampling temperature, > 0 (entropy of the distribution the
            tokens were actually drawn from).

    Returns:
        `(B, T)` fp32, in [0, log V]. Reduce over response tokens with
        `masked_mean(entropy_from_logits(logits), action_mask)` for logging, or with
        `token_mean(..., num_tokens)` for an entropy bonus in the loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be (..., V) with V > 0, got shape {tuple(logits.shape)}")
    z = logits.float() / temperature
    logp = torch.log_softmax(z, dim=-1)
    # p = 0 exactly where z = -inf, and 0 * (-inf) would be NaN: replace log p by 0
    # there before multiplying (replacing it afterwards would leave NaN in the backward).
    logp = torch.where(torch.isneginf(z), torch.zeros_like(logp), logp)
    return -(torch.softmax(z, dim=-1) * logp).sum(dim=-1)
