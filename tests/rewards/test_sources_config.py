"""rewards.sources: a list of small sections, checked key by key like any section."""
import pytest

from rlhf_ds.config import ConfigError, describe, load_config


def _sources(value):
    return load_config(None, [f"--rewards.sources={value}"]).rewards.sources


def test_default_is_the_reward_model():
    (only,) = load_config(None).rewards.sources
    assert (only.type, only.weight, only.label()) == ("model", 1.0, "model")


def test_list_from_the_command_line_and_a_file(tmp_path):
    got = _sources('[{type: model, weight: 1}, {type: function, function: "x.py:f", weight: 0.5}, '
                   '{type: http, url: "http://127.0.0.1:9/score", timeout_s: 2, retries: 1, max_in_flight: 3}]')
    assert [(s.type, s.weight, s.label()) for s in got] == [("model", 1.0, "model"), ("function", 0.5, "f"),
                                                           ("http", 1.0, "http")]
    assert (got[2].timeout_s, got[2].retries, got[2].max_in_flight) == (2.0, 1, 3)
    path = tmp_path / "c.yaml"
    path.write_text("rewards:\n  sources:\n    - type: function\n      function: pkg.mod:score\n      name: acc\n")
    (one,) = load_config(str(path)).rewards.sources
    assert (one.function, one.label()) == ("pkg.mod:score", "acc")


def test_config_json_round_trip(tmp_path):
    cfg = load_config(None, ['--rewards.sources=[{type: function, function: "a.py:f"}, {type: http, url: u}]'])
    cfg.save(str(tmp_path / "config.json"))
    assert load_config(str(tmp_path / "config.json")).rewards == cfg.rewards


@pytest.mark.parametrize("value, message", [
    ("[{type: foo}]", "command line: rewards.sources[0].type: 'foo' is not allowed; allowed: model, function, http"),
    ("[{weight: 1}]", "rewards.sources[0]: 'type' is required; allowed: model, function, http"),
    ("[{type: model}, {type: http, url: u, timeot_s: 1}]",
     "unknown key 'rewards.sources[1].timeot_s' (did you mean 'timeout_s'?); allowed: type, weight, name"),
    ("[{type: http, url: u, retries: -1}]", "rewards.sources[0].retries: -1 is below the minimum 0"),
    ("[{type: model, weight: abc}]", "rewards.sources[0].weight: expected a number, got 'abc'"),
    ("[{type: function}]", "rewards.sources[0]: type function needs 'function'"),
    ("[{type: http}]", "rewards.sources[0]: type http needs 'url'"),
    ("[{type: model, url: u}]", "rewards.sources[0]: 'url' is for type http, not model"),
    ("[{type: function, function: a.py:f, max_in_flight: 2}]", "'max_in_flight' is for type http, not function"),
    ("[{type: model, name: 'a b'}]", "'name' 'a b' may hold only letters"),
    ("[{type: model}, {type: model}]", "rewards.sources[1] is logged as 'model', as is sources[0]; give one"),
    ("[{type: function, function: a.py:f}, {type: function, function: b.py:f}]", "logged as 'f'"),
    ("{type: model}", "rewards.sources: expected a list of mappings with keys type, weight"),
    ("[3]", "rewards.sources[0]: expected a mapping with keys type"),
])
def test_bad_sources_name_the_key(value, message):
    with pytest.raises(ConfigError) as e:
        _sources(value)
    assert message in str(e.value)


def test_error_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rewards:\n  sources:\n    - type: http\n      url: http://x\n      max_in_flight: 0\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: rewards.sources\[0\].max_in_flight: 0 is below the minimum 1"):
        load_config(str(path))


def test_help_lists_the_item_keys():
    text = describe()
    assert "--rewards.sources" in text and "sources[].max_in_flight" in text and "one of: model, function, http" in text
