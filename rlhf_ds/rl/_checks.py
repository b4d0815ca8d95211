"""Input checks shared by the rl functions.

Broadcasting hides most shape bugs in RL code (a `(B, 1)` mask silently covers a
`(B, T)` tensor), so every public function checks its shapes up front and names the
offending arguments in the error.
"""
from typing import Optional, Union

import torch

Count = Union[float, int, torch.Tensor]


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ValueError unless all given tensors have the same shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed} must all have the same shape")


def check_ndim(name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    """Raise ValueError unless `tensor` has `ndim` dimensions (`layout` names them, e.g. "(B, T)")."""
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(tensor.shape)}")


def check_count(name: str, count: Optional[Count]) -> None:
    """A caller-given denominator (token, sequence, pair or group count) must not be negative.

    Only python numbers are checked: inspecting a CUDA tensor would force a host sync
    on every micro-batch.
    """
    if count is not None and not isinstance(count, torch.Tensor) and count < 0:
        raise ValueError(f"{name} must be >= 0, got {count}")
