"""An exponential moving average of the actor's weights, kept shard by shard.

Under ZeRO-3 each rank averages only its own partition (`param.ds_tensor`), so the EMA costs
one shard per rank, not a whole model; below ZeRO-3 it averages the full tensors. To export,
the averaged shards are swapped into the parameters, gathered like the live weights, and
swapped back.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List

import torch


def _storage(p: torch.nn.Parameter) -> torch.Tensor:
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


class ShardedEMA:
    def __init__(self, module: torch.nn.Module, beta: float):
        if not 0.0 < beta < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {beta}")
        self.beta = beta
        self.params: List[torch.nn.Parameter] = [p for p in module.parameters() if p.requires_grad]
        self.shadow: List[torch.Tensor] = [_storage(p).detach().float().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Call after each optimizer step."""
        for s, p in zip(self.shadow, self.params):
            s.mul_(self.beta).add_(_storage(p).detach().float(), alpha=1.0 - self.beta)
        self.updates += 1

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self):
        """The EMA weights in place of the live ones for the duration of the block."""
        saved = [_storage(p).detach().clone() for p in self.params]
        for s, p in zip(self.shadow, self.params):
            _storage(p).copy_(s.to(_storage(p).dtype))
        try:
            yield
        finally:
            for saved_t, p in zip(saved, self.params):
                _storage(p).copy_(saved_t)

    def state_dict(self) -> Dict:
        return {"shadow": [s.cpu() for s in self.shadow], "updates": self.updates, "beta": self.beta}

    def load_state_dict(self, state: Dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's trainable parameters")
        for s, v in zip(self.shadow, state["shadow"]):
            s.copy_(v)
        self.updates = int(state["updates"])
