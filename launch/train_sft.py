"""Thin launcher: see rlhf_ds/cli.py. Run with `deepspeed launch/train_sft.py --deepspeed configs/zero3.json`."""
from rlhf_ds.cli import main_sft

if __name__ == "__main__":
    main_sft()
