"""KL-penalty coefficient controllers.

Source: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
section 2.2: to keep KL(pi || pi_ref) near a target, the coefficient beta follows
    e_t = clip((KL_t - KL_target) / KL_target, -0.2, 0.2),  beta_{t+1} = beta_t (1 + K_beta e_t),
with K_beta = n_steps / horizon, n_steps being the number of samples (episodes)
since the previous update; the fixed controller keeps beta constant.

Both controllers keep their whole state in python floats: `state_dict()` is JSON
serialisable and `load_state_dict()` restores it exactly, so a resumed run continues
with the same beta it stopped with.
"""
import math
from typing import Dict, Union

import torch

Number = Union[float, int, torch.Tensor]

# Ziegler et al. 2019, section 2.2: the proportional error is clipped to +-20%.
PROPORTIONAL_ERROR_CLIP = 0.2


def _load(controller, state: Dict, kind: str, keys) -> Dict[str, float]:
    if state.get("type") != kind:
        raise ValueError(f"state_dict of type {state.get('type')!r} cannot be loaded into "
                         f"{type(controller).__name__} (expects type {kind!r})")
    expected = set(keys) | {"type"}
    if set(state) != expected:
        raise ValueError(f"{type(controller).__name__} state_dict keys must be {sorted(expected)}, "
                         f"got {sorted(state)}")
    return {k: float(state[k]) for k in keys}


def _check_kl(current_kl: Number, n_steps: int) -> float:
    kl = float(current_kl)
    if not math.isfinite(kl):
        # A NaN KL would make beta NaN for the rest of the run.
        raise ValueError(f"current_kl must be finite, got {kl}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    return kl


class FixedKLController:
    """A constant KL coefficient beta.

    Args:
        kl_coef: beta >= 0.
    """

    def __init__(self, kl_coef: float):
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: Number, n_steps: int) -> None:
        """No-op (the signature matches AdaptiveKLController); still validates its inputs."""
        _check_kl(current_kl, n_steps)

    def state_dict(self) -> Dict[str, Union[str, float]]:
        return {"type": "fixed", "value": self.value}

    def load_state_dict(self, state: Dict) -> None:
        self.value = _load(self, state, "fixed", ["value"])["value"]


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, section 2.2).

    `update(current_kl, n_steps)`: `e = clip(current_kl / target - 1, -0.2, 0.2)`,
    `value *= 1 + e * n_steps / horizon`. A KL above target raises beta, below lowers it.

    Args:
        init_kl_coef: initial beta > 0.
        target: target KL per sequence (the same quantity passed to `update`), > 0.
        horizon: number of samples over which beta may change by about e^{0.2}, > 0
            (Ziegler et al. use 10000).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if not init_kl_coef > 0:
            raise ValueError(f"init_kl_coef must be > 0 (a zero beta could never grow), got {init_kl_coef}")
        if not target > 0:
            raise ValueError(f"target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: Number, n_steps: int) -> None:
        """Move beta towards keeping `current_kl` at `target`.

        Args:
            current_kl: observed KL (a number or 0-d tensor), e.g. the batch mean of the
                per-sequence summed per-token KL.
            n_steps: samples seen since the last update (the batch size).
        """
        kl = _check_kl(current_kl, n_steps)
        error = min(max(kl / self.target - 1.0, -PROPORTIONAL_ERROR_CLIP), PROPORTIONAL_ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> Dict[str, Union[str, float]]:
        return {"type": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: Dict) -> None:
        """Restore value, target and horizon: an exact resume also keeps the old schedule."""
        loaded = _load(self, state, "adaptive", ["value", "target", "horizon"])
        self.value, self.target, self.horizon = loaded["value"], loaded["target"], loaded["horizon"]
