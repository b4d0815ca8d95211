"""The trained reward model as a reward source.

It scores the token ids of prompt + response directly (the policy's and the reward model's
tokenizers must agree: checked when the source is built), `micro` rows per forward. Under ZeRO-3
its forward is collective: every rank must call the source in step, with the same number of
rows (the RL loop does: every rank holds the same number of completions).
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .base import RewardBatch, SourceScores


class RewardModelSource:
    """`engine` returns `{"scores": (B,)}` from `(input_ids, attention_mask)` (a ScalarHeadModel engine, or
    the critic's backbone standing in for it with LoRA)."""

    collective = True   # every rank calls it in step

    def __init__(self, engine, micro_batch: int, name: str = "reward_model"):
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.engine, self.micro, self.name = engine, micro_batch, name

    @torch.no_grad()
    def __call__(self, batch: RewardBatch) -> SourceScores:
        if batch.sequences is None or batch.attention_mask is None:
            raise ValueError(f"reward source '{self.name}' scores token ids: the batch has no sequences")
        out = []
        for start in range(0, batch.sequences.shape[0], self.micro):
            out.append(self.engine(batch.sequences[start:start + self.micro],
                                   batch.attention_mask[start:start + self.micro])["scores"].float())
        values = torch.cat(out) if out else torch.zeros(0)
        return SourceScores.everywhere(values)


def check_same_vocabulary(tokenizer, reward_path: str) -> None:
    """The reward model at `reward_path` must read the policy's token ids as the same tokens."""
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(reward_path)
    if other.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"the reward model at {reward_path} uses a different tokenizer than the policy; rlhf_ds "
                         f"scores token ids directly, so both must share one vocabulary")
