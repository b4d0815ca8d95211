import json
import math

import pytest
import torch

from rlhf_ds.rl import RunningMoments, batch_moments, combine_moments


def loop_mean_var(values):
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / (n - 1)


def test_streaming_matches_loop_over_all_values():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(int(torch.randint(1, 9, (1,), generator=g)), generator=g) * 4 + 2 for _ in range(12)]
    moments = RunningMoments()
    for batch in batches:
        moments.update(batch)
    everything = [float(v) for batch in batches for v in batch]
    mean, var = loop_mean_var(everything)
    assert moments.count == len(everything)
    assert math.isclose(moments.mean, mean, rel_tol=1e-12)
    assert math.isclose(moments.var, var, rel_tol=1e-12)
    assert math.isclose(moments.std, math.sqrt(var), rel_tol=1e-12)


def test_hand_values():
    # [1, 2, 3] then [4]: n = 4, mean 2.5, M2 = 2.25 + 0.25 + 0.25 + 2.25 = 5, var = 5 / 3
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    assert moments.state_dict() == {"count": 3, "mean": 2.0, "m2": 2.0}
    moments.update(torch.tensor([4.0]))
    assert moments.state_dict() == {"count": 4, "mean": 2.5, "m2": 5.0}
    assert math.isclose(moments.var, 5 / 3)
    # combine (3, 2, 2) with (1, 4, 0): delta 2, mean 2 + 2 * 1/4 = 2.5, M2 = 2 + 0 + 4 * 3 * 1 / 4 = 5
    assert combine_moments((3, 2.0, 2.0), (1, 4.0, 0.0)) == (4, 2.5, 5.0)
    assert combine_moments((0, 0.0, 0.0), (2, 1.0, 0.5)) == (2, 1.0, 0.5)
    # normalize: (x - 2.5) / sqrt(5/3) ; sqrt(5/3) = 1.2909944
    torch.testing.assert_close(moments.normalize(torch.tensor([2.5, 3.79099445])),
                               torch.tensor([0.0, 1.0]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(moments.normalize(torch.tensor([1.29099445]), subtract_mean=False),
                               torch.tensor([1.0]))


def test_per_rank_moments_combine_to_the_gathered_batch():
    g = torch.Generator().manual_seed(1)
    shards = [torch.randn(5, generator=g), torch.randn(3, generator=g) + 10, torch.randn(0)]
    gathered = RunningMoments()
    gathered.update(torch.cat(shards))
    combined = RunningMoments()
    for shard in shards:
        combined.update_from_moments(*batch_moments(shard))
    assert combined.count == gathered.count
    assert math.isclose(combined.mean, gathered.mean, rel_tol=1e-12)
    assert math.isclose(combined.m2, gathered.m2, rel_tol=1e-12)


def test_mask_selects_entries():
    # only 1 and 3 are counted: mean 2, M2 = 2
    assert batch_moments(torch.tensor([[1.0, 100.0], [3.0, float("nan")]]),
                         torch.tensor([[1, 0], [1, 0]])) == (2, 2.0, 2.0)


def test_large_offset_is_stable():
    # values 1e9 + {0, 1, 2} repeated: var 2/3 * n/(n-1); E[x^2] - E[x]^2 in fp64 would lose it
    moments = RunningMoments()
    for _ in range(100):
        moments.update(torch.tensor([1e9, 1e9 + 1, 1e9 + 2], dtype=torch.float64))
    assert math.isclose(moments.var, 200 / 299, rel_tol=1e-9)


def test_state_dict_round_trip_continues_exactly():
    data = [torch.tensor([1.0, 5.0]), torch.tensor([2.0]), torch.tensor([7.0, -3.0, 0.5])]
    straight = RunningMoments()
    for batch in data:
        straight.update(batch)
    first = RunningMoments()
    first.update(data[0])
    resumed = RunningMoments()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for batch in data[1:]:
        resumed.update(batch)
    assert resumed.state_dict() == straight.state_dict()


def test_bad_inputs_and_empty_state():
    moments = RunningMoments()
    assert math.isnan(moments.var)
    with pytest.raises(ValueError, match="needs at least 2 values"):
        moments.normalize(torch.zeros(3))
    with pytest.raises(ValueError, match="invalid moments"):
        moments.update_from_moments(-1, 0.0, 0.0)
    with pytest.raises(ValueError, match="invalid moments"):
        moments.update_from_moments(2.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="invalid moments"):
        moments.update_from_moments(2, float("nan"), 0.0)
    with pytest.raises(ValueError, match="keys must be"):
        moments.load_state_dict({"count": 1, "mean": 0.0})
    with pytest.raises(ValueError, match="shape mismatch"):
        batch_moments(torch.zeros(3), torch.ones(2))
