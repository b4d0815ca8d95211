"""Reward sources from rewards.sources; per-source means; one process."""
import pytest
import torch

from rlhf_ds.config import load_config
from rlhf_ds.config_schema import ConfigError
from rlhf_ds.rewards import (HTTPSource, RewardBatch, RewardSourceError, SourceScores, combine_on_every_rank,
                             needs_reward_model, source_metrics, sources_from_config)

REWARD_FILE = """
def length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]
"""


class _ConstantModel:
    """What a trainer's reward-model factory returns: a named source (a fixed score, to sum by hand)."""
    name = "reward_model"

    def __call__(self, batch):
        return SourceScores.everywhere(torch.full((len(batch),), 2.0))


def _specs(value):
    return load_config(None, [f"--rewards.sources={value}"]).rewards.sources


def test_sources_weights_and_labels(tmp_path):
    path = tmp_path / "r.py"
    path.write_text(REWARD_FILE)
    specs = _specs(f'[{{type: model, weight: 0.5}}, {{type: function, function: "{path}:length", weight: 2}}, '
                   '{type: http, url: "http://127.0.0.1:9/x", name: judge, retries: 1, max_in_flight: 2}]')
    assert needs_reward_model(specs)
    built = sources_from_config(specs, model_source=_ConstantModel)
    assert [(s.name, w) for s, w in built] == [("model", 0.5), ("length", 2.0), ("judge", 1.0)]
    assert isinstance(built[2][0], HTTPSource) and (built[2][0].retries, built[2][0].max_in_flight) == (1, 2)
    batch = RewardBatch(["p", "q"], ["ab", "abcd"])
    total, parts = combine_on_every_rank(built[:2], batch)
    assert total.tolist() == [0.5 * 2 + 2 * 2, 0.5 * 2 + 2 * 4]
    assert source_metrics(parts) == {"reward/model": 2.0, "reward/model/applies": 1.0, "reward/length": 3.0,
                                     "reward/length/applies": 1.0}


def test_function_only_runs_need_no_reward_model(tmp_path):
    path = tmp_path / "r.py"
    path.write_text(REWARD_FILE)
    specs = _specs(f'[{{type: function, function: "{path}:length"}}]')
    assert not needs_reward_model(specs)
    assert [s.name for s, _ in sources_from_config(specs)] == ["length"]


@pytest.mark.parametrize("value, message", [
    ("[{type: model}]", "rewards.sources[0]: type model needs a trained reward model, and this run has none"),
    ('[{type: function, function: "nowhere/r.py:f"}]', "rewards.sources[0].function: nowhere/r.py: no such file"),
    ("[{type: http, url: 'ftp://x'}]", "rewards.sources[0].url: 'ftp://x' is not an http:// or https:// address"),
])
def test_build_errors_name_the_key(value, message):
    with pytest.raises(ConfigError) as e:
        sources_from_config(_specs(value))
    assert message in str(e.value)


def test_means_leave_out_rows_a_source_does_not_apply_to():
    parts = {"acc": SourceScores(torch.tensor([1.0, 0.0, 0.5, 7.0]), torch.tensor([True, True, True, False])),
             "none": SourceScores(torch.zeros(4), torch.zeros(4, dtype=torch.bool))}
    assert source_metrics(parts) == {"reward/acc": 0.5, "reward/acc/applies": 0.75, "reward/none/applies": 0.0}


def test_one_process_raises_the_source_error_itself():
    from rlhf_ds.rewards import FunctionSource

    bad = FunctionSource("bad", lambda prompts, completions, **kw: [1.0])
    with pytest.raises(RewardSourceError, match="reward source 'bad': returned 1 values for 2 completions"):
        combine_on_every_rank([(bad, 1.0)], RewardBatch(["p", "q"], ["a", "b"]))
