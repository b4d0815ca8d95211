"""Thin launcher: see rlhf_ds/cli.py. Run with `deepspeed launch/train_grpo.py --deepspeed configs/zero3.json`.

GRPO is a configuration of the one RL loop (rlhf_ds/trainers/rl_loop.py): the keys of
config_schema.RL_RECIPES["grpo"], with the demo's values when no model is given; any of them can
be changed in a config file or with --ppo.key=value."""
from rlhf_ds.cli import main_grpo

if __name__ == "__main__":
    main_grpo()
