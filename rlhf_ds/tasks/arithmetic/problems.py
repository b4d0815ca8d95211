"""The questions: small additions and subtractions, each asked in several phrasings.

A fact is (a, op, b) with operands in 0..MAX_OPERAND; subtraction keeps the result non-negative.
Each fact can be asked with any of the op's TEMPLATES. The held-out questions are (fact,
phrasing) pairs: for a fixed share of the facts, one phrasing is kept out of every training file,
so a held-out question is never seen verbatim while its fact is still taught through the other
phrasings (as the describe task holds out (topic, phrasing) pairs). The split does not depend on
the seed, so figures from runs with different seeds are on the same questions.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Tuple

MAX_OPERAND = 9
OPS = ("+", "-")
TEMPLATES = {
    "+": ("what is {a} + {b}?", "compute {a} plus {b}.", "add {a} and {b}.", "{a} + {b} = ?"),
    "-": ("what is {a} - {b}?", "compute {a} minus {b}.", "subtract {b} from {a}.", "{a} - {b} = ?"),
}
# Share of the facts that have one phrasing held out (the eval questions).
EVAL_FACT_SHARE = 0.5


@dataclass(frozen=True)
class Question:
    a: int
    op: str
    b: int
    template: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def text(self) -> str:
        return TEMPLATES[self.op][self.template].format(a=self.a, b=self.b)


def facts() -> List[Tuple[int, str, int]]:
    """Every (a, op, b), in a fixed order."""
    out = []
    for op in OPS:
        for a in range(MAX_OPERAND + 1):
            for b in range(MAX_OPERAND + 1):
                if op == "-" and b > a:
                    continue
                out.append((a, op, b))
    return out


@lru_cache(maxsize=None)
def _split() -> Tuple[Tuple[Question, ...], Tuple[Question, ...]]:
    rng = random.Random("rlhf_ds.tasks.arithmetic/split")    # fixed: the same questions for every seed
    train, held_out = [], []
    for a, op, b in facts():
        qs = [Question(a, op, b, t) for t in range(len(TEMPLATES[op]))]
        if rng.random() < EVAL_FACT_SHARE:
            held_out.append(qs.pop(rng.randrange(len(qs))))
        train.extend(qs)
    return tuple(train), tuple(held_out)


def questions(split: str) -> Tuple[Question, ...]:
    """The questions of `split` ("train" or "eval"), in a fixed order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return _split()[0 if split == "train" else 1]
