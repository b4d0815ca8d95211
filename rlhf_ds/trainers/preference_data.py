"""Datasets of offline preference training: K responses per row, each row knowing its index.

DPO rows are pairs (chosen, rejected); KTO rows are (completion, the next record's completion to
the same prompt, for the KL estimate) with a desirable flag. Both are tokenized as rankings of K
responses (one truncation policy for every stage) and collated to `(B, K, T)`; a row's index lets
the precomputed reference log-probs travel with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..data.batch import TensorBatch
from ..data.dataset import RankingDataset
from ..data.records import RankingRecord, UnpairedRecord


@dataclass
class ResponsesBatch(TensorBatch):
    input_ids: torch.Tensor                  # (B, K, T) prompt + response k, right-padded
    attention_mask: torch.Tensor             # (B, K, T)
    action_mask: torch.Tensor                # (B, K, T) 1 on response tokens
    rows: torch.Tensor                       # (B,) long: each row's position in its dataset
    desirable: Optional[torch.Tensor] = None     # (B,) bool (KTO)
    ref_logps: Optional[torch.Tensor] = None     # (B, K) precomputed reference log-probs

    def flat(self):
        """`(B * K, T)` ids, attention and action masks: all responses in one forward."""
        b, k, t = self.input_ids.shape
        return (self.input_ids.view(b * k, t), self.attention_mask.view(b * k, t), self.action_mask.view(b * k, t))


class ResponsesDataset:
    """`RankingRecord`s of exactly `k` responses each (+ optional desirable flags), tokenized once."""

    def __init__(self, records: Sequence[RankingRecord], tokenizer, max_length: Optional[int],
                 max_prompt_length: Optional[int], k: int, desirable: Optional[Sequence[bool]] = None):
        if any(len(r.responses) != k for r in records):
            raise ValueError(f"every row needs {k} responses")
        self.inner = RankingDataset(list(records), tokenizer, max_length, max_prompt_length, num_responses=k)
        self.k = k
        self.desirable = None if desirable is None else torch.tensor(list(desirable), dtype=torch.bool)
        self.ref: Optional[torch.Tensor] = None          # (N, k) once precomputed

    @property
    def stats(self):
        return self.inner.stats

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        return i, self.inner[i]

    def collate(self, items: List) -> ResponsesBatch:
        rows = torch.tensor([i for i, _ in items], dtype=torch.long)
        r = self.inner.collate([e for _, e in items])
        return ResponsesBatch(input_ids=r.input_ids, attention_mask=r.attention_mask, action_mask=r.action_mask,
                              rows=rows, desirable=None if self.desirable is None else self.desirable[rows],
                              ref_logps=None if self.ref is None else self.ref[rows].float())

    def fingerprint_row(self, i: int) -> list:
        e = self.inner[i]
        return [e.prompt_ids, e.responses, e.response_masks]


def ranking_pairs(records: Sequence[RankingRecord]) -> List[RankingRecord]:
    """Every ordered pair of each ranking (a pair is a ranking of two): responses i and j with rank
    i < rank j become (chosen i, rejected j); ties give no pair. Order: record, then i, then j."""
    out = []
    for rec in records:
        for i, ri in enumerate(rec.ranks):
            for j, rj in enumerate(rec.ranks):
                if 0 <= ri < rj:
                    out.append(RankingRecord(rec.prompt, [rec.responses[i], rec.responses[j]], [0, 1], rec.margin))
    return out


def kl_rows(records: Sequence[UnpairedRecord]) -> List[RankingRecord]:
    """Each unpaired record as (its completion, the next record's completion) to its prompt: the second is
    KTO's mismatched pair for the KL estimate (Ethayarajh et al. 2024, section 4.1). The mismatch is fixed
    by the record order, not by the batch, so splitting a batch over ranks changes nothing."""
    n = len(records)
    return [RankingRecord(r.prompt, [r.completion, records[(i + 1) % n].completion], [0, 0])
            for i, r in enumerate(records)]
