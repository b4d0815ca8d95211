"""The checker: the answer's fixed form, the two rule rewards, and pass@k.

A response is well formed when it is exactly `answer: N` (N an integer written without leading
zeros, surrounding whitespace ignored), and right when it is well formed and N is the question's
answer. The reward functions follow the signature of `rlhf_ds.rewards.function`, so a config
names them as `rlhf_ds.tasks.arithmetic:exact_match` and `rlhf_ds.tasks.arithmetic:format_reward`.
"""
from __future__ import annotations

import re
from math import comb
from typing import Any, Dict, List, Optional, Sequence

ANSWER_FORM = "answer: {}"
_FORM = re.compile(r"answer: (-?(?:0|[1-9][0-9]*))")


def parse_answer(completion: str) -> Optional[int]:
    """N when `completion` is in the fixed form `answer: N`, else None."""
    m = _FORM.fullmatch(completion.strip())
    return int(m.group(1)) if m else None


def _expected(answer: Any) -> Optional[int]:
    """The answer column as an integer (CSV files give ints, JSON files strings); None if absent."""
    if answer is None:
        return None
    try:
        return int(str(answer).strip())
    except ValueError:
        raise ValueError(f"the answer column holds {answer!r}, not an integer") from None


def is_correct(completion: str, answer: Any) -> bool:
    got = parse_answer(completion)
    return got is not None and got == _expected(answer)


def exact_match(prompts: List[str], completions: List[str], answer: List[Any], **columns) -> List[Optional[float]]:
    """1.0 when the completion is `answer: N` with the right N, else 0.0; None for a row without an
    answer (the reward does not apply to it)."""
    return [None if a is None else float(is_correct(c, a)) for c, a in zip(completions, answer)]


def format_reward(prompts: List[str], completions: List[str], **columns) -> List[float]:
    """1.0 when the completion is in the fixed form `answer: N`, whatever N, else 0.0."""
    return [float(parse_answer(c) is not None) for c in completions]


# The rule reward of the task, as config entries (rewards.sources): exact match, plus a small
# format term so that a group whose samples are all wrong still learns the form.
REWARD_SOURCES = [
    {"type": "function", "function": "rlhf_ds.tasks.arithmetic:exact_match", "weight": 1.0},
    {"type": "function", "function": "rlhf_ds.tasks.arithmetic:format_reward", "weight": 0.1},
]


# ------------------------------------------------------------------------------- pass@k

def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from `num_samples`, of
    which `num_correct` are right, is right: 1 - C(n - c, k) / C(n, k), the unbiased estimator of
    Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", eq. 1)."""
    if not 1 <= k <= num_samples:
        raise ValueError(f"k must be in 1..{num_samples} (the number of samples), got {k}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"num_correct must be in 0..{num_samples}, got {num_correct}")
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


def pass_rates(correct: Sequence[Sequence[bool]]) -> Dict[str, float]:
    """From `correct[q][s]` (sample s of question q is right; n samples per question):
    `accuracy` = pass@1 (the mean over all samples), `pass_at_n` (a question counts when any of
    its n samples is right: what sampling a group of n can reach), and `n`."""
    if not correct:
        raise ValueError("no questions")
    n = len(correct[0])
    if n == 0 or any(len(row) != n for row in correct):
        raise ValueError("every question needs the same number (>= 1) of samples")
    counts = [sum(map(bool, row)) for row in correct]
    return {"accuracy": sum(pass_at_k(n, c, 1) for c in counts) / len(counts),
            "pass_at_n": sum(pass_at_k(n, c, n) for c in counts) / len(counts),
            "n": n}


def score_samples(completions: Sequence[Sequence[str]], answers: Sequence[Any]) -> Dict[str, float]:
    """`pass_rates` of n sampled completions per question, plus `format_rate` (share of all samples
    in the fixed form)."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} groups of completions for {len(answers)} answers")
    correct = [[is_correct(c, a) for c in group] for group, a in zip(completions, answers)]
    formed = [parse_answer(c) is not None for group in completions for c in group]
    return {**pass_rates(correct), "format_rate": sum(formed) / len(formed)}
