"""Thin launcher: see rlhf_ds/evaluation/. Run with
`deepspeed --num_gpus 2 launch/evaluate.py outputs/demo/sft outputs/demo/ppo`."""
from rlhf_ds.evaluation.cli import main

if __name__ == "__main__":
    main()
