"""The shared inputs of the end-to-end RL benchmark (benchmarks/test_e2e_rl.py), built once per size.

Usage: python e2e_setup.py WORK_DIR HIDDEN LAYERS INTERMEDIATE

Writes under WORK_DIR:
    tokenizer/          the demo task's BPE tokenizer (rlhf_ds.tasks), used by both tools
    policy/             a randomly initialised LlamaForCausalLM (seed 0): the actor and the reference
    reward/             a randomly initialised LlamaForSequenceClassification, num_labels=1 (seed 1): the
                        reward model, and the value model / critic's starting point (critic_init=reward)
    prompts.jsonl       512 training prompts of the demo task ({"prompt": ...})
    eval_prompts.jsonl  16 held-out prompts (rlhf_ds evaluates before and after its loop; untimed)
    setup.json          the shape and parameter counts
Both tools load these same directories with `from_pretrained`, so their weights are identical.
"""
import json
import os
import sys

import torch

WORK, HIDDEN, LAYERS, INTERMEDIATE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
N_PROMPTS, N_EVAL = 512, 16


def main() -> None:
    from transformers import LlamaForSequenceClassification

    from rlhf_ds.models.loading import quiet_transformers
    from rlhf_ds.tasks.generator import DescribeTask, write_jsonl
    from rlhf_ds.tasks.tiny_model import build_tiny_model, tiny_config
    from rlhf_ds.tasks.tokenizer import build_tokenizer

    quiet_transformers()
    os.makedirs(WORK, exist_ok=True)
    tok = build_tokenizer(os.path.join(WORK, "tokenizer"), seed=0)
    # Heads of 64 dimensions, grouped-query attention with half as many key/value heads (as the demo).
    heads = max(1, HIDDEN // 64)
    shape = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=INTERMEDIATE,
                 num_attention_heads=heads, num_key_value_heads=max(1, heads // 2))
    policy = build_tiny_model(tok, os.path.join(WORK, "policy"), seed=0, **shape)
    torch.manual_seed(1)
    reward = LlamaForSequenceClassification(_seq_config(tiny_config(tok, **shape)))
    reward.save_pretrained(os.path.join(WORK, "reward"))
    tok.save_pretrained(os.path.join(WORK, "reward"))
    task = DescribeTask(seed=0)
    write_jsonl(os.path.join(WORK, "prompts.jsonl"), task.prompt_records(N_PROMPTS))
    write_jsonl(os.path.join(WORK, "eval_prompts.jsonl"), task.prompt_records(N_EVAL, split="eval"))
    info = {"shape": shape, "vocab_size": len(tok),
            "policy_parameters": sum(p.numel() for p in policy.parameters()),
            "reward_parameters": sum(p.numel() for p in reward.parameters()),
            "prompts": N_PROMPTS}
    with open(os.path.join(WORK, "setup.json"), "w") as f:
        json.dump(info, f, indent=1)


def _seq_config(config):
    config.num_labels = 1
    return config


if __name__ == "__main__":
    main()
