"""Records of the arithmetic task, deterministic from a seed, and its .jsonl files.

SFT responses are of mixed quality, so that the SFT policy is right only part of the time while
some of its samples are right far more often: the headroom that RL with a rule reward can take.
Each response is drawn from RESPONSE_MIX:

    right       answer: 12               the fixed form, the right number
    wrong       answer: 13               the fixed form, a near miss (off by 1, 2 or 10)
    unformed    the answer is 12.        the right number in another form (no reward)
    both        12 + 1                   another form and a wrong number

Every record draws from its own random stream named by (seed, kind, split, index), as in the
describe task, so the first m of n records are the m records, whatever else was generated.
Prompt records carry the `answer` column that the exact-match reward reads.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Dict, List

from ..generator import write_jsonl
from .check import ANSWER_FORM
from .problems import Question, questions

RESPONSE_MIX = (("right", 0.45), ("wrong", 0.25), ("unformed", 0.2), ("both", 0.1))
NEAR_MISSES = (-10, -2, -1, 1, 2, 10)
OTHER_FORMS = ("{n}", "the answer is {n}.", "answer = {n}", "{a} {op} {b} = {n}", "answer:{n}")


def _kind(rng: random.Random) -> str:
    x, total = rng.random(), 0.0
    for kind, p in RESPONSE_MIX:
        total += p
        if x < total:
            return kind
    return RESPONSE_MIX[-1][0]


def response(q: Question, rng: random.Random) -> str:
    """One response of a random quality (see RESPONSE_MIX) to question `q`."""
    kind = _kind(rng)
    n = q.answer if kind in ("right", "unformed") else q.answer + rng.choice(NEAR_MISSES)
    if kind in ("right", "wrong"):
        return ANSWER_FORM.format(n)
    return rng.choice(OTHER_FORMS).format(n=n, a=q.a, op=q.op, b=q.b)


@dataclass(frozen=True)
class ArithmeticTask:
    """Questions, mixed-quality answers and the answer column, as plain dicts in the formats of
    `rlhf_ds.data` (prompts are the bare user message; the chat template comes later)."""
    seed: int = 0

    def _rng(self, kind: str, split: str, index: int) -> random.Random:
        return random.Random(f"rlhf_ds.tasks.arithmetic/{self.seed}/{kind}/{split}/{index}")

    def sft_records(self, n: int, split: str = "train") -> List[Dict[str, str]]:
        """`n` records {"prompt", "response"}: a question of `split` and a mixed-quality answer."""
        pool = questions(split)
        records = []
        for i in range(n):
            rng = self._rng("sft", split, i)
            q = rng.choice(pool)
            records.append({"prompt": q.text, "response": response(q, rng)})
        return records

    def prompt_records(self, n: int, split: str = "train") -> List[Dict[str, str]]:
        """`n` records {"prompt", "answer"}: the split's questions in a seeded order, cycled (so an
        evaluation over n >= len(split questions) asks each held-out question)."""
        pool = list(questions(split))
        self._rng("prompts", split, 0).shuffle(pool)
        return [{"prompt": q.text, "answer": str(q.answer)} for q in (pool[i % len(pool)] for i in range(n))]


DEFAULT_SIZES: Dict[str, int] = {"sft": 4000, "prompts": 2000, "eval_prompts": len(questions("eval"))}


def write_arithmetic_data(out_dir: str, seed: int = 0, **sizes: int) -> Dict[str, str]:
    """Write sft.jsonl, prompts.jsonl (training questions) and eval_prompts.jsonl (held-out
    questions) into `out_dir`; returns {name: path}. The same seed writes the same bytes."""
    unknown = set(sizes) - set(DEFAULT_SIZES)
    if unknown:
        raise ValueError(f"unknown sizes {sorted(unknown)}; allowed: {sorted(DEFAULT_SIZES)}")
    n = {**DEFAULT_SIZES, **sizes}
    task = ArithmeticTask(seed)
    os.makedirs(out_dir, exist_ok=True)
    files = {"sft": lambda: task.sft_records(n["sft"]),
             "prompts": lambda: task.prompt_records(n["prompts"]),
             "eval_prompts": lambda: task.prompt_records(n["eval_prompts"], split="eval")}
    return {name: write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), make()) for name, make in files.items()}
