"""Everything the arithmetic task needs on disk, in one call: data, tokenizer, base model.

    out_dir/
      data/sft.jsonl, prompts.jsonl, eval_prompts.jsonl
      tokenizer/            byte-level BPE trained on this task's text + the chat template
      base_model/           the untrained tiny LM (the describe task's shape) and its tokenizer
      task.json             what was built, and the figures of the SFT data

Like `prepare_demo`: call it on one process (rank 0) and let the others wait; a directory built
with the same arguments (task.json says so) is reused.
"""
from __future__ import annotations

import json
import os
from statistics import mean
from typing import Dict, List

from ..generator import read_jsonl
from .check import is_correct, parse_answer
from .generator import ArithmeticTask, write_arithmetic_data
from .problems import questions

# Bumped whenever the questions, the checker or the generator change, so that an older directory
# is rebuilt rather than reused.
TASK_VERSION = 1


def tokenizer_corpus(seed: int = 0, n_records: int = 3000) -> List[str]:
    """Text the BPE is trained on: questions of both splits and SFT responses."""
    task = ArithmeticTask(seed)
    texts = [q.text for split in ("train", "eval") for q in questions(split)]
    for record in task.sft_records(n_records):
        texts.extend((record["prompt"], record["response"]))
    return texts


def sft_data_figures(sft_path: str) -> Dict[str, float]:
    """Share of SFT responses that are right and that are well formed (what imitation reaches)."""
    answers = {q.text: q.answer for q in questions("train")}
    sft = read_jsonl(sft_path)
    return {"sft_data_accuracy": mean(is_correct(r["response"], answers[r["prompt"]]) for r in sft),
            "sft_data_format_rate": mean(parse_answer(r["response"]) is not None for r in sft)}


def prepare_arithmetic(out_dir: str, seed: int = 0, arch: str = "llama", overwrite: bool = False,
                       **sizes: int) -> Dict[str, str]:
    """Build (or reuse) the task's files under `out_dir`; returns {"data_sft", "data_prompts",
    "data_eval_prompts", "tokenizer", "base_model", "task"} -> path. `sizes`: record counts of
    `generator.DEFAULT_SIZES` (e.g. sft=500)."""
    from ..tiny_model import build_tiny_model, count_parameters
    from ..tokenizer import build_tokenizer

    task_file = os.path.join(out_dir, "task.json")
    wanted = {"version": TASK_VERSION, "seed": seed, "arch": arch, "sizes": dict(sorted(sizes.items()))}
    if not overwrite and os.path.exists(task_file):
        with open(task_file, encoding="utf-8") as f:
            built = json.load(f)
        paths = {k: os.path.join(out_dir, v) for k, v in built.get("paths", {}).items()}
        if built.get("built_with") == wanted and all(os.path.exists(p) for p in paths.values()):
            return paths

    data = write_arithmetic_data(os.path.join(out_dir, "data"), seed=seed, **sizes)
    tokenizer = build_tokenizer(os.path.join(out_dir, "tokenizer"), seed=seed, texts=tokenizer_corpus(seed))
    model = build_tiny_model(tokenizer, os.path.join(out_dir, "base_model"), arch=arch, seed=seed)
    relative = {**{f"data_{k}": os.path.join("data", os.path.basename(v)) for k, v in data.items()},
                "tokenizer": "tokenizer", "base_model": "base_model", "task": "task.json"}
    info = {"task": "arithmetic", "built_with": wanted, "paths": relative, "vocab_size": len(tokenizer),
            "parameters": count_parameters(model), "eval_questions": len(questions("eval")),
            **sft_data_figures(data["sft"])}
    # Written last: a task.json on disk means everything it lists is complete.
    with open(task_file, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return {k: os.path.join(out_dir, v) for k, v in relative.items()}
