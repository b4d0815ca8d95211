"""The original RLHFConfig's flat keys (model_name, sft_lr, ...) as aliases of the nested keys: in files,
dicts, on the command line and as RLHFConfig(...) keyword arguments, with one notice line per key."""
import dataclasses
import json

import pytest

from rlhf_ds.config import SECTIONS, TOP_LEVEL, ConfigError, RLHFConfig, load_config
from rlhf_ds.config_aliases import FLAT_ALIASES

# Every key of the original flat config (issue 12), with a value that differs from the default.
FLAT = {
    "model_name": "org/model", "tokenizer_path": "org/tokenizer", "sft_data_path": "sft.jsonl", "sft_epochs": 3.0,
    "sft_batch_size": 8, "sft_lr": 1e-4, "reward_data_path": "pairs.jsonl", "reward_epochs": 2.0, "reward_lr": 3e-5,
    "reward_batch_size": 4, "freeze_reward_backbone": True, "ppo_data_path": "prompts.jsonl", "ppo_iterations": 7,
    "ppo_lr_policy": 2e-6, "ppo_lr_value": 3e-6, "ppo_batch_size": 16, "ppo_mini_batch_size": 8, "ppo_epochs": 3,
    "max_length": 1024, "save_dir": "out/flat", "save_interval": 5, "log_level": "debug",
}
# The same configuration written with today's keys, by hand.
NESTED = {
    "model": {"name_or_path": "org/model", "tokenizer_path": "org/tokenizer"},
    "sft": {"data_path": "sft.jsonl", "epochs": 3.0, "batch_size": 8, "learning_rate": 1e-4},
    "reward": {"data_path": "pairs.jsonl", "epochs": 2.0, "learning_rate": 3e-5, "batch_size": 4,
               "freeze_reward_backbone": True},
    "ppo": {"prompt_path": "prompts.jsonl", "iterations": 7, "policy_lr": 2e-6, "value_lr": 3e-6,
            "rollout_batch_size": 16, "minibatch_size": 8, "ppo_epochs": 3},
    "data": {"max_length": 1024}, "save_dir": "out/flat", "save_interval": 5, "logging": {"log_level": "debug"},
}


def _notices(err):
    return [line for line in err.splitlines() if "is a flat key of the original RLHFConfig" in line]


def test_every_alias_names_a_key_of_the_schema():
    for flat, (section, key) in FLAT_ALIASES.items():
        assert key in {f.name for f in dataclasses.fields(SECTIONS[section])}, flat
        assert flat not in SECTIONS and flat not in TOP_LEVEL, flat
    assert set(FLAT) - set(FLAT_ALIASES) == {"save_dir", "save_interval"}   # these two kept their names


def test_a_flat_dict_is_the_nested_config(capsys):
    assert load_config(FLAT) == load_config(NESTED)
    notices = _notices(capsys.readouterr().err)
    assert len(notices) == len(FLAT_ALIASES)
    assert "config: 'sft_lr' is a flat key of the original RLHFConfig; read as 'sft.learning_rate'" in notices[5]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_flat_file(tmp_path, capsys, suffix):
    path = tmp_path / f"old{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(FLAT, indent=2))
    else:
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in FLAT.items()))
    assert load_config(str(path)) == load_config(NESTED)
    notices = _notices(capsys.readouterr().err)
    # file:line of each key, as for any other key of a file
    line = 1 + list(FLAT).index("ppo_lr_value") + (1 if suffix == ".json" else 0)
    expected = f"{path}:{line}: 'ppo_lr_value' is a flat key of the original RLHFConfig; read as 'ppo.value_lr'"
    assert any(expected in n for n in notices), notices


def test_a_bad_value_under_a_flat_key_names_its_line(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("model_name: org/model\nsft_lr: fast\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: sft.learning_rate: expected a number, got 'fast'"):
        load_config(str(path))


def test_old_and_new_key_with_two_values_is_an_error():
    with pytest.raises(ConfigError, match="'sft_lr' .*and 'sft.learning_rate' .* are the same key with two values"):
        load_config({"sft_lr": 1e-4, "sft": {"learning_rate": 2e-5}})
    # the same value twice is not a conflict
    assert load_config({"sft_lr": 1e-4, "sft": {"learning_rate": 1e-4}}).sft.learning_rate == 1e-4


def test_command_line_flat_key(capsys):
    cfg = load_config(None, ["--sft_lr=3e-4", "--ppo_iterations", "9"])
    assert cfg.sft.learning_rate == 3e-4 and cfg.ppo.iterations == 9
    assert len(_notices(capsys.readouterr().err)) == 2


def test_keyword_arguments(capsys):
    kwargs = {k: v for k, v in FLAT.items()}
    cfg = RLHFConfig(**kwargs)
    assert load_config(cfg) == load_config(NESTED)
    assert len(_notices(capsys.readouterr().err)) == len(FLAT_ALIASES)
    # A section passed in is copied, never changed; an alias that contradicts it is an error.
    from rlhf_ds.config import SFTConfig
    sft = SFTConfig()
    assert RLHFConfig(sft=sft, sft_lr=5e-5).sft.learning_rate == 5e-5 and sft.learning_rate == SFTConfig().learning_rate
    with pytest.raises(ConfigError, match="'sft_lr'"):
        RLHFConfig(sft=SFTConfig(learning_rate=1e-3), sft_lr=5e-5)


def test_notice_on_rank_zero_only(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    load_config({"sft_lr": 1e-4})
    assert _notices(capsys.readouterr().err) == []
