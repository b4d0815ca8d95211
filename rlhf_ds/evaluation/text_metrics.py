"""Figures computed from responses alone (no model): distinct-n and win / tie / loss counts.

Pure Python, no torch: each function is checked in tests against hand-counted values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence


def words(text: str) -> List[str]:
    """Whitespace-separated, lower-cased words: distinct-n counts words, not model tokens, so models
    with different tokenizers are compared on the same footing."""
    return text.lower().split()


def distinct_n(texts: Iterable[str], n: int) -> Optional[float]:
    """Distinct n-grams over all n-grams of all `texts` (Li et al. 2016, "A Diversity-Promoting
    Objective Function for Neural Conversation Models", section 4.4): 1.0 when no n-gram repeats
    anywhere, near 0 when every response says the same thing. None when no text has n words."""
    seen, total = set(), 0
    for text in texts:
        w = words(text)
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else None


@dataclass(frozen=True)
class WinTieLoss:
    """How often a model's response beat the baseline's on the same prompt."""
    wins: int
    ties: int
    losses: int

    @property
    def count(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> Optional[float]:
        """(wins + ties / 2) / comparisons: a tie counts half, so equal models score 0.5."""
        return (self.wins + 0.5 * self.ties) / self.count if self.count else None


def compare(scores: Sequence[float], baseline: Sequence[float], same_response: Sequence[bool],
            tie_margin: float = 0.0) -> WinTieLoss:
    """Win / tie / loss of `scores[i]` against `baseline[i]` (the same prompt). A pair is a tie when the
    two responses are the same tokens (their scores may still differ in the last bits, from different
    padding) or when the scores differ by at most `tie_margin`."""
    if not len(scores) == len(baseline) == len(same_response):
        raise ValueError(f"compare: {len(scores)} scores, {len(baseline)} baseline scores, "
                         f"{len(same_response)} same-response flags")
    wins = ties = losses = 0
    for s, b, same in zip(scores, baseline, same_response):
        if same or abs(s - b) <= tie_margin:
            ties += 1
        elif s > b:
            wins += 1
        else:
            losses += 1
    return WinTieLoss(wins, ties, losses)
