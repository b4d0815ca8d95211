"""Tokenized examples -> padded tensor batches.

Training batches are padded on the RIGHT (real tokens start at column 0, so causal
positions are the usual 0..n-1); generation prompts on the LEFT (every prompt ends at
the last column, so new tokens of all rows are appended at the same place; right
padding would make the model continue after pad tokens). Pads use the tokenizer's
pad id, which must differ from EOS (see `special_tokens.ensure_pad_token`).

`pad_to_multiple_of` rounds T up (tensor-core friendly shapes, fewer recompiles).
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence

import torch

from rlhf_ds.data.batch import PromptBatch, RankingBatch, SFTBatch
from rlhf_ds.data.tokenization import IGNORE_INDEX, PromptExample, RankingExample, SFTExample


def _width(lengths, pad_to_multiple_of: Optional[int]) -> int:
    t = max(lengths, default=0)
    if pad_to_multiple_of:
        t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
    return t


def _fill(rows: Sequence[Sequence[int]], width: int, value: int, left: bool = False) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            else:
                out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _mask(lengths: Sequence[int], width: int, left: bool = False) -> torch.Tensor:
    pos = torch.arange(width).unsqueeze(0)
    n = torch.tensor(list(lengths), dtype=torch.long).unsqueeze(1)
    return (pos >= width - n if left else pos < n).long()


def collate_sft(examples: List[SFTExample], pad_token_id: int,
                pad_to_multiple_of: Optional[int] = None) -> SFTBatch:
    """B examples -> `SFTBatch` `(B, T)`, right-padded; labels -100 on padding."""
    lengths = [len(e.input_ids) for e in examples]
    t = _width(lengths, pad_to_multiple_of)
    return SFTBatch(input_ids=_fill([e.input_ids for e in examples], t, pad_token_id),
                    attention_mask=_mask(lengths, t),
                    labels=_fill([e.labels for e in examples], t, IGNORE_INDEX))


def collate_ranking(examples: List[RankingExample], pad_token_id: int, num_responses: Optional[int] = None,
                    pad_to_multiple_of: Optional[int] = None) -> RankingBatch:
    """B examples -> `RankingBatch` `(B, K, T)`, right-padded. K is the largest
    number of responses in the batch (or `num_responses`); shorter records get
    missing entries (rank -1, the prompt alone, see `RankingBatch`). `margins` is
    None when no example has one."""
    k = max(len(e.responses) for e in examples)
    if num_responses is not None:
        if num_responses < k:
            raise ValueError(f"num_responses={num_responses} but an example has {k} responses")
        k = num_responses
    seqs, actions, ranks = [], [], []
    for e in examples:
        n = len(e.responses)
        for j in range(k):
            if j < n:
                seqs.append(e.prompt_ids + e.responses[j])
                actions.append([0] * len(e.prompt_ids) + e.response_masks[j])
            else:
                seqs.append(list(e.prompt_ids))
                actions.append([0] * len(e.prompt_ids))
        ranks.append(list(e.ranks) + [-1] * (k - n))
    t = _width([len(s) for s in seqs], pad_to_multiple_of)
    b = len(examples)
    margins = None
    if any(e.margin is not None for e in examples):
        margins = torch.tensor([0.0 if e.margin is None else e.margin for e in examples], dtype=torch.float)
    return RankingBatch(input_ids=_fill(seqs, t, pad_token_id).view(b, k, t),
                        attention_mask=_mask([len(s) for s in seqs], t).view(b, k, t),
                        action_mask=_fill(actions, t, 0).view(b, k, t),
                        ranks=torch.tensor(ranks, dtype=torch.long),
                        margins=margins)


def collate_prompts(examples: List[PromptExample], pad_token_id: int,
                    pad_to_multiple_of: Optional[int] = None) -> PromptBatch:
    """B examples -> `PromptBatch` `(B, P)`, LEFT-padded for generation."""
    lengths = [len(e.input_ids) for e in examples]
    p = _width(lengths, pad_to_multiple_of)
    return PromptBatch(input_ids=_fill([e.input_ids for e in examples], p, pad_token_id, left=True),
                       attention_mask=_mask(lengths, p, left=True),
                       prompts=[e.text for e in examples],
                       meta=[dict(e.meta) for e in examples])


COLLATE = {SFTExample: collate_sft, RankingExample: collate_ranking, PromptExample: collate_prompts}


def collator(example_type, pad_token_id: int, **kwargs):
    """A one-argument collate function for `DataLoader(collate_fn=...)`."""
    return functools.partial(COLLATE[example_type], pad_token_id=pad_token_id, **kwargs)
