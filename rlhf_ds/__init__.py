"""rlhf_ds: RLHF (SFT, reward models, PPO, DPO, GRPO) on DeepSpeed ZeRO-3."""

__version__ = "0.1.0"
