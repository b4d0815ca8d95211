"""Per-response rows -> one line of figures per model (pure Python: tested on hand-made rows).

A row is one model's response to one prompt:
    {"prompt": int, "prompt_text": str, "model": str, "score": float, "gold": float | None, "kl": float, "length": int,
     "response": str, "response_ids": list of int}
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from .text_metrics import compare, distinct_n


def _mean(xs: Sequence[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def _std(xs: Sequence[float]) -> Optional[float]:
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summarize(rows: List[Dict], models: Sequence[str], baseline: str, tie_margin: float = 0.0,
              perplexity: Optional[Dict[str, Optional[Dict[str, float]]]] = None) -> List[Dict]:
    """One dict per model, in `models` order: means of score, gold, KL and length, distinct-1/2, win rate
    against `baseline` on the prompts both answered (ties counted half, and reported), perplexity."""
    by_model: Dict[str, Dict[int, Dict]] = {m: {} for m in models}
    for r in rows:
        by_model[r["model"]][r["prompt"]] = r
    base = by_model[baseline]
    out = []
    for m in models:
        mine = [by_model[m][p] for p in sorted(by_model[m])]
        scores = [r["score"] for r in mine]
        golds = [r["gold"] for r in mine if r.get("gold") is not None]
        shared = [p for p in sorted(by_model[m]) if p in base]
        wtl = compare([by_model[m][p]["score"] for p in shared], [base[p]["score"] for p in shared],
                      [by_model[m][p]["response_ids"] == base[p]["response_ids"] for p in shared], tie_margin)
        ppl = (perplexity or {}).get(m) or {}
        out.append({
            "model": m,
            "prompts": len(mine),
            "rm_score": _mean(scores),
            "rm_score_std": _std(scores),
            "gold_reward": _mean(golds) if golds else None,
            "win_rate": wtl.win_rate,
            "wins": wtl.wins,
            "ties": wtl.ties,
            "losses": wtl.losses,
            "kl": _mean([r["kl"] for r in mine]),
            "response_length": _mean([r["length"] for r in mine]),
            "distinct_1": distinct_n([r["response"] for r in mine], 1),
            "distinct_2": distinct_n([r["response"] for r in mine], 2),
            "sft_perplexity": ppl.get("eval_ppl"),
            "sft_nll": ppl.get("eval_loss"),
        })
    return out
