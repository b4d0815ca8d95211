"""What a source from code returned, checked and turned into `SourceScores`.

Functions and HTTP endpoints answer with plain values, one per completion: a number, or None
("does not apply to this row"). Anything else stops the run here, with the source's name, the
row and a short view of that row's prompt and completion, so the user finds the case at once:
a wrong count, a non-number (a bool included: `True` is more often a bug than a reward), NaN or
an infinity.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch

from .base import RewardBatch, RewardSourceError, SourceScores

_SNIPPET = 60   # characters of a prompt or completion quoted in an error


def _short(value: Any) -> str:
    """A string as a one-line quoted excerpt; anything else as its (shortened) repr."""
    if isinstance(value, str):
        text = " ".join(value.split())      # one line, whatever the text held
        return repr(text if len(text) <= _SNIPPET else text[:_SNIPPET - 3] + "...")
    text = " ".join(repr(value).split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET - 3] + "..."


def describe_row(batch: RewardBatch, row: int) -> str:
    """`prompt '...', completion '...'` of one row, for an error message."""
    return f"prompt {_short(batch.prompts[row])}, completion {_short(batch.completions[row])}"


def _as_list(source: str, values: Any) -> list:
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):   # tensors, numpy arrays
        values = values.tolist()
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Sequence):
        raise RewardSourceError(source, f"returned {type(values).__name__} {_short(values)}; expected a list "
                                "with one number (or None) per completion")
    return list(values)


def scores_from_values(source: str, values: Any, batch: RewardBatch) -> SourceScores:
    """(B,) scores from a list of numbers or None, one per completion of `batch`; raises
    RewardSourceError naming `source` and the first offending row."""
    values = _as_list(source, values)
    if len(values) != len(batch):
        raise RewardSourceError(source, f"returned {len(values)} values for {len(batch)} completions; expected "
                                "one number (or None) per completion")
    out = torch.zeros(len(values), dtype=torch.float32)
    applies = torch.zeros(len(values), dtype=torch.bool)
    for row, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            hint = " (a bool: return float(...) if it is meant as 0/1)" if isinstance(v, bool) else ""
            raise RewardSourceError(source, f"returned {_short(v)} ({type(v).__name__}){hint}, expected a number "
                                    f"or None; {describe_row(batch, row)}", row)
        try:
            v = float(v)
        except OverflowError:           # an int beyond float range
            v = math.inf
        if not math.isfinite(v):
            raise RewardSourceError(source, f"returned {v} (not a finite number); {describe_row(batch, row)}", row)
        out[row], applies[row] = v, True
    return SourceScores(out, applies)
