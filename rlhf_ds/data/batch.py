"""Typed tensor containers shared by the data loaders and the trainers.

A batch is a dataclass whose fields are tensors with the batch dimension first
(or None). Subclasses list their fields with shape comments; this base gives them
`to()`, `split()` and `cat()` so no trainer hand-slices a dict of tensors.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Type, TypeVar

import torch

B = TypeVar("B", bound="TensorBatch")


@dataclasses.dataclass
class TensorBatch:
    """Base for batch dataclasses: every field is a tensor `(B, ...)`, a list of
    length B (texts, metadata), or None."""

    def _tensor_fields(self):
        for f in dataclasses.fields(self):
            yield f.name, getattr(self, f.name)

    def __len__(self) -> int:
        for _, v in self._tensor_fields():
            if isinstance(v, (torch.Tensor, list)):
                return len(v)
        return 0

    def to(self: B, device, non_blocking: bool = False) -> B:
        return dataclasses.replace(self, **{
            k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
            for k, v in self._tensor_fields()})

    def index(self: B, idx) -> B:
        """Rows `idx` (slice, index tensor or list of ints) of every field."""
        def take(v):
            if isinstance(v, torch.Tensor):
                return v[idx]
            if isinstance(v, list):
                if isinstance(idx, slice):
                    return v[idx]
                return [v[int(i)] for i in idx]
            return v
        return dataclasses.replace(self, **{k: take(v) for k, v in self._tensor_fields()})

    def split(self: B, size: int) -> List[B]:
        """Consecutive chunks of at most `size` rows."""
        if size <= 0:
            raise ValueError(f"split size must be positive, got {size}")
        n = len(self)
        return [self.index(slice(i, i + size)) for i in range(0, n, size)]

    @classmethod
    def cat(cls: Type[B], batches: List[B]) -> B:
        """Concatenate along the batch dimension. Fields with different sequence
        lengths are not padded here: callers pad first (see `pad_right`)."""
        if not batches:
            raise ValueError("cat() needs at least one batch")
        out = {}
        for f in dataclasses.fields(batches[0]):
            vals = [getattr(b, f.name) for b in batches]
            if all(v is None for v in vals):
                out[f.name] = None
            elif all(isinstance(v, torch.Tensor) for v in vals):
                out[f.name] = torch.cat(vals, dim=0)
            elif all(isinstance(v, list) for v in vals):
                out[f.name] = [x for v in vals for x in v]
            else:
                out[f.name] = vals[0]
        return type(batches[0])(**out)


def pad_right(t: torch.Tensor, length: int, value) -> torch.Tensor:
    """Pad the last dimension of `t` on the right to `length`."""
    extra = length - t.shape[-1]
    if extra < 0:
        raise ValueError(f"cannot pad length {t.shape[-1]} down to {length}")
    if extra == 0:
        return t
    return torch.nn.functional.pad(t, (0, extra), value=value)


# ------------------------------------------------------------------ data batches
# Built by `rlhf_ds.data.collate`. Token masks are aligned with `input_ids` (not
# shifted): a model's logits at t-1 score the token at t, so losses shift by one.

@dataclasses.dataclass
class SFTBatch(TensorBatch):
    """Right-padded supervised batch."""
    input_ids: torch.Tensor        # (B, T) long, pad id after the text
    attention_mask: torch.Tensor   # (B, T) long, 1 on real tokens
    labels: torch.Tensor           # (B, T) long, = input_ids on assistant tokens, -100 elsewhere


@dataclasses.dataclass
class RankingBatch(TensorBatch):
    """K responses per prompt, right-padded; pairs are K=2 with the chosen first.

    A missing entry (a record with fewer than K responses) holds the prompt alone,
    so a model can run on it without fully masked rows, and has rank -1 and an
    all-zero `action_mask`: losses must skip it. Run a model on
    `input_ids.view(B * K, T)`.
    """
    input_ids: torch.Tensor        # (B, K, T) long
    attention_mask: torch.Tensor   # (B, K, T) long, 1 on prompt + response tokens
    action_mask: torch.Tensor      # (B, K, T) long, 1 on response tokens that are trained on
    ranks: torch.Tensor            # (B, K) long, 0 = best, ties equal, -1 = missing
    margins: Optional[torch.Tensor] = None   # (B,) float, 0 where a record gave none


@dataclasses.dataclass
class PromptBatch(TensorBatch):
    """Left-padded prompts for generation: every row ends at the same position, so
    generated tokens of all rows start at column P."""
    input_ids: torch.Tensor        # (B, P) long, pad id before the text
    attention_mask: torch.Tensor   # (B, P) long, 1 on real tokens
    prompts: List[str]             # B rendered prompts (with the generation prompt)
    meta: List[dict]               # B dicts: the prompt records' other fields
