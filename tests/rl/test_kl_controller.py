import json
import math

import pytest
import torch

from rlhf_ds.rl import AdaptiveKLController, FixedKLController


def loop_adaptive(init, target, horizon, history):
    """Ziegler et al. 2019, section 2.2, written out."""
    beta = init
    for kl, n in history:
        error = (kl - target) / target
        error = 0.2 if error > 0.2 else (-0.2 if error < -0.2 else error)
        beta = beta * (1 + error * n / horizon)
    return beta


def test_fixed_controller_never_moves_and_round_trips():
    ctl = FixedKLController(0.05)
    for kl in (0.0, 100.0, torch.tensor(3.0)):
        ctl.update(kl, n_steps=64)
    assert ctl.value == 0.05
    state = json.loads(json.dumps(ctl.state_dict()))
    other = FixedKLController(1.0)
    other.load_state_dict(state)
    assert other.value == 0.05


def test_adaptive_hand_values():
    # target 6, horizon 10000, beta 0.1
    # KL 9: e = 9/6 - 1 = 0.5 -> clipped to 0.2; beta *= 1 + 0.2 * 256 / 10000 = 1.00512 -> 0.100512
    # KL 5.4: e = -0.1; beta *= 1 - 0.1 * 100 / 10000 = 0.999 -> 0.100411488
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=256)
    assert math.isclose(ctl.value, 0.100512, rel_tol=1e-12)
    ctl.update(torch.tensor(5.4), n_steps=100)
    assert math.isclose(ctl.value, 0.100411488, rel_tol=1e-9)


def test_adaptive_update_direction():
    for kl, direction in ((8.0, 1), (6.0, 0), (4.0, -1), (0.0, -1), (1e6, 1)):
        ctl = AdaptiveKLController(0.2, target=6.0, horizon=1000)
        ctl.update(kl, n_steps=10)
        assert (ctl.value > 0.2) - (ctl.value < 0.2) == direction, kl
    # the clip bounds one step: KL 1e6 moves beta by the same factor as KL 7.2 (e = 0.2)
    a, b = AdaptiveKLController(0.2, 6.0, 1000), AdaptiveKLController(0.2, 6.0, 1000)
    a.update(1e6, 10)
    b.update(7.2, 10)
    assert math.isclose(a.value, b.value, rel_tol=1e-12)


def test_adaptive_matches_loop():
    g = torch.Generator().manual_seed(0)
    history = [(float(torch.rand(1, generator=g)) * 12, int(torch.randint(1, 512, (1,), generator=g)))
               for _ in range(50)]
    ctl = AdaptiveKLController(0.05, target=6.0, horizon=10000)
    for kl, n in history:
        ctl.update(kl, n)
    assert math.isclose(ctl.value, loop_adaptive(0.05, 6.0, 10000, history), rel_tol=1e-12)


def test_adaptive_state_dict_gives_exact_resume():
    history = [(7.0, 64), (3.0, 64), (12.0, 32), (6.5, 64)]
    uninterrupted = AdaptiveKLController(0.1, 6.0, 500)
    for kl, n in history:
        uninterrupted.update(kl, n)
    first = AdaptiveKLController(0.1, 6.0, 500)
    for kl, n in history[:2]:
        first.update(kl, n)
    saved = json.dumps(first.state_dict())
    resumed = AdaptiveKLController(0.3, 1.0, 7)  # whatever the new run was built with
    resumed.load_state_dict(json.loads(saved))
    assert (resumed.target, resumed.horizon) == (6.0, 500.0)
    for kl, n in history[2:]:
        resumed.update(kl, n)
    assert resumed.value == uninterrupted.value  # bit-exact


def test_bad_inputs():
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        FixedKLController(-0.1)
    with pytest.raises(ValueError, match="init_kl_coef must be > 0"):
        AdaptiveKLController(0.0, 6.0, 100)
    with pytest.raises(ValueError, match="target must be > 0"):
        AdaptiveKLController(0.1, 0.0, 100)
    with pytest.raises(ValueError, match="horizon must be > 0"):
        AdaptiveKLController(0.1, 6.0, 0)
    ctl = AdaptiveKLController(0.1, 6.0, 100)
    with pytest.raises(ValueError, match="current_kl must be finite"):
        ctl.update(float("nan"), 10)
    with pytest.raises(ValueError, match="n_steps must be >= 0"):
        ctl.update(1.0, -1)
    with pytest.raises(ValueError, match="state_dict of type 'fixed' cannot be loaded into AdaptiveKLController"):
        ctl.load_state_dict(FixedKLController(0.1).state_dict())
    with pytest.raises(ValueError, match="keys must be"):
        ctl.load_state_dict({"type": "adaptive", "value": 0.1})
    assert ctl.value == 0.1  # a failed load leaves the controller untouched
