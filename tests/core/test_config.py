"""Config: defaults, layers, errors that name file:line, key and allowed values; round trip."""
import json

import pytest

from rlhf_ds.cli import split_args
from rlhf_ds.config import DEMO_PRESET, ConfigError, RLHFConfig, load_config


def test_demo_preset_applies_only_without_a_model():
    demo = load_config()
    assert demo.is_demo and demo.sft.learning_rate == DEMO_PRESET["sft"]["learning_rate"]
    real = load_config(None, ["--model.name_or_path=/models/x"])
    assert not real.is_demo and real.sft.learning_rate == RLHFConfig().sft.learning_rate


def test_layers_file_then_command_line(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("sft:\n  learning_rate: 1.0e-4\n  epochs: 1\nppo:\n  kl_estimator: k3\n")
    cfg = load_config(str(f), ["--sft.epochs=3", "--ppo.dual_clip", "3"])
    assert cfg.sft.learning_rate == 1e-4          # from the file
    assert cfg.sft.epochs == 3.0                  # the command line wins over the file
    assert cfg.ppo.kl_estimator == "k3" and cfg.ppo.dual_clip == 3.0
    assert cfg.ppo.iterations == DEMO_PRESET["ppo"]["iterations"]   # file keys do not hide the preset


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("sft:\n  epochs: 1\nppo:\n  kl_estimatr: k2\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    msg = str(e.value)
    assert f"{f}:4:" in msg and "ppo.kl_estimatr" in msg and "kl_estimator" in msg


def test_json_file_errors_have_lines_too(tmp_path):
    f = tmp_path / "run.json"
    f.write_text('{\n  "ppo": {\n    "gamma": 3\n  }\n}\n')
    with pytest.raises(ConfigError, match=r"run.json:3: ppo.gamma: 3.0 is above the maximum 1.0"):
        load_config(str(f))


@pytest.mark.parametrize("override, expected", [
    ("--ppo.kl_estimator=k4", "allowed: k1, k2, k3"),
    ("--sft.epochs=abc", "sft.epochs: expected a number"),
    ("--model.device=tpu", "allowed: auto, cpu, cuda"),
    ("--nosuch.key=1", "unknown key 'nosuch'"),
    ("--ppo.use_kernels=yes", "allowed: auto, reference"),
    ("--logging.tensorboard=maybe", "expected true/false"),
])
def test_bad_command_line_values(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match=r"ppo.minibatch_size \(32 completions\) must divide the 48 completions"):
        load_config(None, ["--ppo.rollout_batch_size=48", "--ppo.minibatch_size=32"])
    # In completions: 12 prompts x 4 samples = 48 completions divide into minibatches of 16.
    assert load_config(None, ["--ppo.rollout_batch_size=12", "--ppo.n_samples=4", "--ppo.minibatch_size=16"])
    with pytest.raises(ConfigError, match="lora.r > 0"):
        load_config(None, ["--lora.quantization=nf4"])


def test_saved_config_loads_back_unchanged(tmp_path):
    cfg = load_config(None, ["--ppo.kl_coef=0.3", "--save_dir", str(tmp_path)])
    path = tmp_path / "config.json"
    cfg.save(str(path))
    assert json.loads(path.read_text())["ppo"]["kl_coef"] == 0.3
    assert load_config(str(path)) == cfg


def test_cli_maps_launcher_flags():
    config, overrides = split_args(["--local_rank=1", "--deepspeed", "configs/zero2.json", "--resume",
                                    "--config", "x.yaml", "--save_dir=/tmp/o", "--ppo.iterations", "5"])
    assert config == "x.yaml"
    assert overrides == ["--deepspeed.config=configs/zero2.json", "--resume=true", "--save_dir=/tmp/o",
                         "--ppo.iterations", "5"]
    cfg = load_config(None, overrides)
    assert cfg.resume and cfg.save_dir == "/tmp/o" and cfg.ppo.iterations == 5


def test_format_choices_match_the_data_layer():
    from rlhf_ds.config import RewardConfig, SFTConfig
    from rlhf_ds.data.formats import FORMATS
    import dataclasses

    def choices(cls, name):
        return set(next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]) - {"auto"}

    assert choices(SFTConfig, "data_format") == {n for n, f in FORMATS.items() if f.kind == "sft"}
    assert choices(RewardConfig, "data_format") == {n for n, f in FORMATS.items() if f.kind in ("preference", "ranking")}
