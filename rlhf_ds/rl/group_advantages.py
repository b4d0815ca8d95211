"""Critic-free advantages from groups of samples of the same prompt.

Sources:
- GRPO: Shao et al. 2024, "DeepSeekMath", section 4.1.2 (outcome supervision):
  A_i = (r_i - mean(r)) / std(r) over the G outputs of one prompt.
- Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
  Perspective" (Dr. GRPO): dividing by std(r) biases training towards prompts that are
  too easy or too hard; they use A_i = r_i - mean(r) (`scale_by_std=False`).
- RLOO: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization
  for Learning from Human Feedback in LLMs" (RLOO, the leave-one-out baseline of
  Kool et al. 2019):
  A_i = r_i - 1/(G-1) sum_{j != i} r_j.

Layout: scores of one prompt are contiguous, `scores[g*G:(g+1)*G]` is group g (the
order in which a sampler repeats each prompt G times). Broadcast the `(B,)` result
over response tokens with `advantages[:, None] * action_mask`.
"""
import torch


def _grouped(scores: torch.Tensor, group_size: int, minimum: int, why: str) -> torch.Tensor:
    if scores.dim() != 1:
        raise ValueError(f"scores must be (B,), got shape {tuple(scores.shape)}")
    if group_size < minimum:
        raise ValueError(f"group_size must be >= {minimum} ({why}), got {group_size}")
    if scores.shape[0] % group_size != 0:
        raise ValueError(f"batch size B={scores.shape[0]} is not divisible by group_size "
                         f"G={group_size}: B must be n_groups * G")
    return scores.to(torch.promote_types(scores.dtype, torch.float32)).view(-1, group_size)


def grpo_advantages(scores: torch.Tensor, group_size: int, scale_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """GRPO group-normalised advantages (Shao et al. 2024), or Dr. GRPO's unscaled ones.

    `A_i = (r_i - mean_group(r)) / (std_group(r) + eps)`, std with Bessel's correction
    (n - 1); with `scale_by_std=False`, `A_i = r_i - mean_group(r)` (Liu et al. 2025).
    A group whose scores are all equal gets advantage 0 (nothing to learn from it).

    Args:
        scores: `(B,)` sequence rewards, B = n_groups * group_size, groups contiguous.
        group_size: G >= 2 samples per prompt (with G = 1 there is no baseline).
        scale_by_std: divide by the group std (GRPO) or not (Dr. GRPO).
        eps: added to the std so constant groups do not divide by 0.

    Returns:
        `(B,)` advantages, fp32 (fp64 for fp64 scores).
    """
    grouped = _grouped(scores, group_size, 2, "a group of one has no baseline")
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024).

    `A_i = r_i - (sum_group(r) - r_i) / (G - 1)`: the baseline of each sample is the
    mean of the other samples of its prompt, so it does not depend on the sample
    itself and the policy-gradient estimate stays unbiased.

    Args:
        scores: `(B,)` sequence rewards, B = n_groups * group_size, groups contiguous.
        group_size: G >= 2 samples per prompt.

    Returns:
        `(B,)` advantages, fp32 (fp64 for fp64 scores).
    """
    grouped = _grouped(scores, group_size, 2, "the leave-one-out baseline needs another sample")
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)
