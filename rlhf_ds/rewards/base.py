"""The one interface every reward source implements, and how weighted sources combine.

A source turns a batch of completions into one value per completion, or says that it does not
apply to a row (a unit test for a question that has none, a format rule for a free-text task).
The RL loop never asks where a reward came from: a trained reward model, a Python function and
an HTTP endpoint all answer a `RewardBatch` with `SourceScores`, and `combine` adds them with
their weights. Each source's own mean (over the rows it applies to) is logged under its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import torch


class RewardSourceError(RuntimeError):
    """A source failed on real data: raised with the source's name and the offending row, so the
    run can stop with one line that says which source and which completion."""

    def __init__(self, source: str, message: str, row: int = -1, rank: Optional[int] = None):
        where = ", ".join(([f"rank {rank}"] if rank is not None else []) + ([f"row {row}"] if row >= 0 else []))
        super().__init__(f"reward source '{source}'{f' ({where})' if where else ''}: {message}")
        self.source, self.message, self.row, self.rank = source, message, row, rank

    def __reduce__(self):          # picklable: it crosses ranks (broadcast) and processes
        return type(self), (self.source, self.message, self.row, self.rank)


@dataclass
class RewardBatch:
    """What a source may read. Rows are completions (n per prompt when sampling groups)."""
    prompts: List[str]                    # the prompt's text as the user wrote it (last user turn)
    completions: List[str]                # the decoded response, special tokens removed
    columns: Dict[str, List[Any]] = field(default_factory=dict)  # the prompt records' other columns, per row
    sequences: torch.Tensor = None        # (B, T) prompt + response token ids (left-padded prompt)
    attention_mask: torch.Tensor = None   # (B, T)
    action_mask: torch.Tensor = None      # (B, R) 1 on response tokens
    ended: torch.Tensor = None            # (B,) bool: the response ended with EOS

    def __len__(self) -> int:
        return len(self.completions)


@dataclass
class SourceScores:
    values: torch.Tensor                  # (B,) float32; 0 where the source does not apply
    applies: torch.Tensor                 # (B,) bool

    @classmethod
    def everywhere(cls, values: torch.Tensor) -> "SourceScores":
        values = values.detach().float().reshape(-1)
        return cls(values, torch.ones_like(values, dtype=torch.bool))


class RewardSource(Protocol):
    name: str

    def __call__(self, batch: RewardBatch) -> SourceScores:
        """Scores for every row of `batch`. Sources backed by a sharded model are called on every
        rank in step (their forward is collective); the others are local to the rank."""


def combine(sources: Sequence[Tuple[RewardSource, float]], batch: RewardBatch
            ) -> Tuple[torch.Tensor, Dict[str, SourceScores]]:
    """sum_i w_i * r_i over the sources that apply to each row (a row no source applies to gets 0).
    Returns the (B,) combined rewards and each source's own scores, by name, for logging."""
    total = torch.zeros(len(batch), dtype=torch.float32)
    parts: Dict[str, SourceScores] = {}
    for source, weight in sources:
        s = source(batch)
        if s.values.shape != (len(batch),):
            raise RewardSourceError(source.name, f"returned {tuple(s.values.shape)} values for {len(batch)} rows")
        s = SourceScores(s.values.detach().float().cpu(), s.applies.cpu())
        total += weight * torch.where(s.applies, s.values, torch.zeros_like(s.values))
        parts[source.name] = s
    return total, parts


def columns_from_meta(meta: Sequence[Dict[str, Any]], repeat: int = 1) -> Dict[str, List[Any]]:
    """`RewardBatch.columns` from the prompt records' other fields (`PromptBatch.meta`): one list per
    column over all records, None where a record lacks the column, each value repeated `repeat`
    times in a row (n completions per prompt, prompt-major)."""
    names: List[str] = []
    for m in meta:
        names.extend(k for k in m if k not in names)
    return {k: [m.get(k) for m in meta for _ in range(repeat)] for k in names}
