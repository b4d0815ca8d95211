"""Reward sources behind one interface (see base.py)."""
from .base import RewardBatch, RewardSource, RewardSourceError, SourceScores, combine

__all__ = ["RewardBatch", "RewardSource", "RewardSourceError", "SourceScores", "combine"]
