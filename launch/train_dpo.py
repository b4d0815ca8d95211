"""Thin launcher: see rlhf_ds/cli.py. Run with `deepspeed launch/train_dpo.py --deepspeed configs/zero3.json`."""
from rlhf_ds.cli import main_dpo

if __name__ == "__main__":
    main_dpo()
