"""A few of an iteration's completions as text, for a person to read beside the curves: a reward
that climbs while the text degenerates (reward hacking, repetition) shows here first."""
from __future__ import annotations

from typing import Dict, List, Sequence

from ..data.records import PromptRecord
from .rl_rewards import decode_responses, last_user_text
from .rl_sampling import Draw


def training_samples(tokenizer, records: Sequence[PromptRecord], draw: Draw, k: int) -> List[Dict]:
    """The first `k` rows of this rank's draw: the prompt as the user wrote it, the completion,
    the combined reward before shaping, the reward the advantages used, and each source's score
    (None where the source does not apply)."""
    rollout = draw.rollout.split(k)[0]
    texts = decode_responses(tokenizer, rollout)
    out = []
    for i, text in enumerate(texts):
        row = {"prompt": last_user_text(records[draw.rows[i]]), "completion": text,
               "reward": float(draw.raw[i]), "shaped_reward": float(draw.scores[i])}
        for name, part in draw.parts.items():
            row[f"reward/{name}"] = float(part.values[i]) if bool(part.applies[i]) else None
        out.append(row)
    return out
