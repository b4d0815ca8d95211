"""Everything the demo needs on disk, in one call: data, tokenizer, base model.

    out_dir/
      data/*.jsonl          sft, preference, preference_eval, ranking, prompts, eval_prompts
      tokenizer/            the BPE + chat template (AutoTokenizer)
      base_model/           the untrained tiny LM and its tokenizer (AutoModelFor...)
      task.json             what was built, and the reference figures of the task

Call it on one process (rank 0) and let the others wait: the model is built with
`from_config`, which must not run under `deepspeed.zero.Init`.
"""
from __future__ import annotations

import json
import os
from statistics import mean
from typing import Dict

from .annotator import ANNOTATOR_TEMPERATURE
from .generator import DEFAULT_RANKING_K, read_jsonl, write_demo_data
from .gold import ATTRIBUTE_WEIGHTS, GOLD_REWARD_MAX, gold_reward

# Bumped whenever the words, the reward or the generator change, so that a demo
# directory built by older code is rebuilt rather than reused.
TASK_VERSION = 5


def reference_figures(data_paths: Dict[str, str]) -> Dict[str, float]:
    """Figures a run is compared with: the mean gold reward of the SFT data (what
    imitation alone reaches) and the share of held-out preference labels that agree
    with the gold reward (the accuracy ceiling of any reward model on those labels)."""
    sft = read_jsonl(data_paths["sft"])
    pairs = read_jsonl(data_paths["preference_eval"])
    agree = [gold_reward(r["prompt"], r["chosen"]) > gold_reward(r["prompt"], r["rejected"])
             for r in pairs]
    return {
        "sft_data_mean_gold_reward": mean(gold_reward(r["prompt"], r["response"]) for r in sft),
        "gold_accuracy_on_preference_eval": mean(agree),
    }


def _absolute(out_dir: str, relative: Dict[str, str]) -> Dict[str, str]:
    return {name: os.path.join(out_dir, path) for name, path in relative.items()}


def prepare_demo(out_dir: str, seed: int = 0, arch: str = "llama",
                 ranking_k: int = DEFAULT_RANKING_K, overwrite: bool = False,
                 **sizes: int) -> Dict[str, str]:
    """Build (or reuse, when task.json says it was built with the same arguments)
    the demo's files under `out_dir`; returns {"data_<name>", "tokenizer",
    "base_model", "task"} -> path. `sizes` are the record counts of
    `generator.DEFAULT_SIZES` (e.g. sft=500).

    task.json stores the paths relative to `out_dir`, so a copied or moved
    directory is still reused.
    """
    from .tiny_model import build_tiny_model, count_parameters
    from .tokenizer import build_tokenizer

    task_file = os.path.join(out_dir, "task.json")
    wanted = {"version": TASK_VERSION, "seed": seed, "arch": arch, "ranking_k": ranking_k,
              "sizes": dict(sorted(sizes.items()))}
    if not overwrite and os.path.exists(task_file):
        with open(task_file, encoding="utf-8") as f:
            built = json.load(f)
        paths = _absolute(out_dir, built.get("paths", {}))
        if built.get("built_with") == wanted and all(os.path.exists(p) for p in paths.values()):
            return paths

    data = write_demo_data(os.path.join(out_dir, "data"), seed=seed, k=ranking_k, **sizes)
    tokenizer = build_tokenizer(os.path.join(out_dir, "tokenizer"), seed=seed)
    model = build_tiny_model(tokenizer, os.path.join(out_dir, "base_model"), arch=arch, seed=seed)
    relative = {**{f"data_{k}": os.path.join("data", os.path.basename(v)) for k, v in data.items()},
                "tokenizer": "tokenizer", "base_model": "base_model", "task": "task.json"}
    info = {
        "task": "describe",
        "built_with": wanted,
        "paths": relative,
        "gold_reward_max": GOLD_REWARD_MAX,
        "attribute_weights": ATTRIBUTE_WEIGHTS,
        "annotator_temperature": ANNOTATOR_TEMPERATURE,
        "vocab_size": len(tokenizer),
        "parameters": count_parameters(model),
        **reference_figures(data),
    }
    # Written last: a task.json on disk means everything it lists is complete.
    with open(task_file, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return _absolute(out_dir, relative)
