"""Thin launcher: see rlhf_ds/evaluation/chat.py. Run with `python launch/chat.py outputs/demo/ppo`."""
from rlhf_ds.evaluation.chat import main

if __name__ == "__main__":
    main()
