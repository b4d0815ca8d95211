"""A verifiable task: small additions and subtractions, checked exactly, with a format rule.

    from rlhf_ds.tasks.arithmetic import prepare_arithmetic, score_samples
    paths = prepare_arithmetic("runs/arith/task", seed=0)   # data files, tokenizer, base model

Rewards for `rewards.sources` (see REWARD_SOURCES):
    rlhf_ds.tasks.arithmetic:exact_match      1 when the response is `answer: N` with the right N
    rlhf_ds.tasks.arithmetic:format_reward    1 when the response is `answer: N`, any N

Files:
    problems.py    the facts, their phrasings and the held-out (fact, phrasing) questions
    check.py       the fixed form, the reward functions, pass@1 / pass@n
    generator.py   mixed-quality SFT data and prompt records with an `answer` column
    prepare.py     data + tokenizer + tiny base model on disk (like the describe demo's)
    preset.py      config values that suit the task (sizes, SFT and RL settings, the rule rewards)

Only prepare.py imports `transformers`, on first use.
"""
from .check import (ANSWER_FORM, REWARD_SOURCES, exact_match, format_reward, is_correct, parse_answer, pass_at_k,
                    pass_rates, score_samples)
from .generator import DEFAULT_SIZES, RESPONSE_MIX, ArithmeticTask, write_arithmetic_data
from .preset import EVAL_SAMPLES, PRESET, RL_PRESETS
from .problems import MAX_OPERAND, Question, questions

_LAZY = {"prepare_arithmetic": ".prepare", "tokenizer_corpus": ".prepare", "TASK_VERSION": ".prepare"}

__all__ = ["ANSWER_FORM", "ArithmeticTask", "DEFAULT_SIZES", "EVAL_SAMPLES", "MAX_OPERAND", "PRESET", "Question",
           "RESPONSE_MIX", "RL_PRESETS",
           "REWARD_SOURCES", "exact_match", "format_reward", "is_correct", "parse_answer", "pass_at_k",
           "pass_rates", "questions", "score_samples", "write_arithmetic_data", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
