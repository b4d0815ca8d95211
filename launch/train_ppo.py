"""Thin launcher: see rlhf_ds/cli.py. Run with `deepspeed launch/train_ppo.py --deepspeed configs/zero3.json`."""
from rlhf_ds.cli import main_ppo

if __name__ == "__main__":
    main_ppo()
