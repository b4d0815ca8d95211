"""The schedule keys of the supervised-style stages are defined once (config_schema.StageSchedule) and
keep their names in every section, so sft.* and reward.* keys work as before."""
import dataclasses

from rlhf_ds.config import load_config
from rlhf_ds.config_schema import DPOConfig, RewardConfig, SFTConfig, StageSchedule

KEYS = [f.name for f in dataclasses.fields(StageSchedule)]


def test_each_stage_section_has_the_shared_schedule_keys_with_one_help_text():
    assert KEYS == ["epochs", "max_steps", "batch_size", "micro_batch_size", "learning_rate", "weight_decay",
                    "warmup_ratio", "lr_scheduler", "eval_interval"]
    for section in (SFTConfig, RewardConfig, DPOConfig):
        fields = {f.name: f for f in dataclasses.fields(section)}
        for key in KEYS:
            assert fields[key].metadata == StageSchedule.__dataclass_fields__[key].metadata, (section, key)
    # Each stage keeps its own defaults.
    assert (SFTConfig().epochs, SFTConfig().learning_rate) == (2.0, 2e-5)
    assert (RewardConfig().epochs, RewardConfig().learning_rate) == (1.0, 1e-5)
    assert DPOConfig().learning_rate == 1e-6


def test_section_keys_still_work_on_the_command_line_and_in_dicts():
    cfg = load_config({"model": {"name_or_path": "some/model"}, "sft": {"epochs": 3, "lr_scheduler": "linear"}},
                      ["--reward.batch_size=8", "--reward.eval_interval=5", "--dpo.micro_batch_size=2"])
    assert (cfg.sft.epochs, cfg.sft.lr_scheduler) == (3.0, "linear")
    assert (cfg.reward.batch_size, cfg.reward.eval_interval, cfg.dpo.micro_batch_size) == (8, 5, 2)
