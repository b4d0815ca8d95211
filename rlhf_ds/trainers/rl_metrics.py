"""Statistics of the RL loop reduced over ranks by name: no tuple of sums read back by position."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch

from ..engine import all_reduce_max
from .common import reduce_sums

__all__ = ["StatSums", "reduce_sums"]


@dataclass
class StatSums:
    """Statistics of an update, reduced over ranks at the end, each by the rule its kind needs:
    - `add(name, value, weight)`: a weighted mean (per-token figures weighted by tokens); a name
      ending in `_max` is a maximum instead (a weighted mean of maxima is not a maximum);
    - `add_total(name, value)`: summed over micro-batches and ranks, then divided by `per` at
      `reduce`: for a loss that each micro-batch holds its share of (local sum / global count),
      the sum of the shares of one optimizer step IS the step's loss, whatever the aggregation.
    Tensor values stay on their device until `reduce`, which reads them all in one transfer: a
    `float()` per value would wait for the device about a dozen times per micro-batch (issue 9)."""
    sums: Dict[str, float] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)
    maxima: Dict[str, float] = field(default_factory=dict)
    totals: Dict[str, float] = field(default_factory=dict)
    pending: List[Tuple[str, str, object, float]] = field(default_factory=list)   # (kind, name, value, weight)

    def add(self, name: str, value, weight: float) -> None:
        v = value.detach().float().mean() if torch.is_tensor(value) else float(value)
        self.pending.append(("add", name, v, weight))

    def add_total(self, name: str, value) -> None:
        # A copy: the loss tensor itself could be reused in place before `reduce` reads it.
        v = value.detach().to(torch.float32, copy=True) if torch.is_tensor(value) else float(value)
        self.pending.append(("total", name, v, 0.0))

    def _settle(self) -> None:
        """Read every pending tensor at once, then accumulate in the order the values came (the sums
        are the same, bit for bit, as converting each value when it was added)."""
        tensors = [v for _, _, v, _ in self.pending if torch.is_tensor(v)]
        read = iter(torch.stack([t.reshape(()) for t in tensors]).tolist() if tensors else [])
        for kind, name, v, weight in self.pending:
            v = next(read) if torch.is_tensor(v) else v
            if kind == "total":
                self.totals[name] = self.totals.get(name, 0.0) + v
            elif name.endswith("_max"):
                self.maxima[name] = max(self.maxima.get(name, v), v)
            else:
                self.sums[name] = self.sums.get(name, 0.0) + v * weight
                self.weights[name] = self.weights.get(name, 0.0) + weight
        self.pending = []

    def reduce(self, per: float = 1.0) -> Dict[str, float]:
        self._settle()
        reduced = reduce_sums({**{f"s:{n}": v for n, v in self.sums.items()},
                               **{f"w:{n}": v for n, v in self.weights.items()},
                               **{f"t:{n}": v for n, v in self.totals.items()}})
        out = {n: (reduced[f"s:{n}"] / reduced[f"w:{n}"] if reduced[f"w:{n}"] > 0 else 0.0) for n in self.sums}
        out.update({n: reduced[f"t:{n}"] / max(per, 1e-12) for n in self.totals})
        peaks = sorted(self.maxima)
        if peaks:
            top = all_reduce_max(torch.tensor([self.maxima[n] for n in peaks], dtype=torch.float64))
            out.update(zip(peaks, top.tolist()))
        return out
