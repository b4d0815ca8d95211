"""The embedded demo task: "describe the topic", with a gold reward playing the human.

    from rlhf_ds.tasks import DescribeTask, gold_reward, write_demo_data
    paths = prepare_demo("runs/demo/task", seed=0)   # data files, tokenizer, base model

Files:
    vocabulary.py   the words, the grammar, the prompts and their train / eval split
    gold.py         six attributes in [0, 1], weighted to a reward in [0, GOLD_REWARD_MAX]
    responses.py    mixed-quality responses from independent quality knobs, and revisions
    annotator.py    Bradley-Terry / Plackett-Luce label noise on the gold rewards
    generator.py    DescribeTask (records by seed) and the .jsonl files
    tokenizer.py    byte-level BPE trained locally + chat template
    tiny_model.py   a ~0.9M-parameter LLaMA / Qwen2 causal LM, randomly initialised

The tokenizer and model builders import `transformers` (slow), so they load on
first use; the gold reward and the data need only the standard library.
"""
from .annotator import ANNOTATOR_TEMPERATURE, label_agreement_probability, noisy_ranks
from .gold import (ATTRIBUTE_WEIGHTS, GOLD_REWARD_MAX, gold_attributes, gold_reward, gold_rewards,
                   mean_gold_attributes, parse_topic)
from .generator import DEFAULT_SIZES, DescribeTask, read_jsonl, write_demo_data, write_jsonl

_LAZY = {
    "build_tokenizer": ".tokenizer",
    "CHAT_TEMPLATE": ".tokenizer",
    "build_tiny_model": ".tiny_model",
    "count_parameters": ".tiny_model",
    "MAX_NEW_TOKENS": ".tiny_model",
    "prepare_demo": ".demo",
}

__all__ = [
    "ANNOTATOR_TEMPERATURE", "ATTRIBUTE_WEIGHTS", "DEFAULT_SIZES", "DescribeTask",
    "GOLD_REWARD_MAX", "gold_attributes", "gold_reward", "gold_rewards",
    "label_agreement_probability", "mean_gold_attributes", "noisy_ranks", "parse_topic",
    "read_jsonl", "write_demo_data", "write_jsonl", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
