"""Evaluation of the RL policy on held-out prompts: reward (through the same sources as training),
gold reward when the task has one, response length, and the task's own figures from several
samples per prompt when it defines them (the arithmetic task: pass@1, pass@n, format rate;
rlhf_ds/tasks/registry.py).

Samples at the training temperature, from a fixed seed and without disturbing the training random
stream: the SFT policy (before the first update) and the final policy are compared on the same
prompts with the same random numbers. One sample per prompt unless the task asks for more; the
reward, gold reward and length are then means over all samples.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch

from ..data.dataset import PromptDataset
from ..data.records import PromptRecord
from ..engine import GenerationSettings
from ..rewards import SourceScores, columns_from_meta
from ..tasks.registry import sample_evaluation
from .common import RunContext
from .rl_metrics import reduce_sums
from .rl_rewards import Sources, decode_responses, last_user_text, score_rollout_rewards, source_means
from .rl_sampling import generate_rollout


def eval_rows(size: int, rank: int, world: int) -> Tuple[List[int], int]:
    """This rank's prompts: a contiguous block of ceil(size / world), padded with copies of prompt 0
    so that every rank generates and scores as many rows (collective forwards stay in step), and how
    many of them count (the padding does not). Every prompt counts exactly once over the ranks."""
    per_rank = math.ceil(size / world)
    real = list(range(rank * per_rank, min(size, (rank + 1) * per_rank)))
    return real + [0] * (per_rank - len(real)), len(real)


def _first_rows(parts: Dict[str, SourceScores], rows: int) -> Dict[str, SourceScores]:
    return {k: SourceScores(v.values[:rows], v.applies[:rows]) for k, v in parts.items()}


@torch.no_grad()
def evaluate_policy(ctx: RunContext, engines, sources: Sources, prompts: PromptDataset, records: List[PromptRecord],
                    settings: GenerationSettings, chunk: int) -> Dict[str, float]:
    dist, tok = ctx.dist, ctx.tokenizer
    task_eval = sample_evaluation(ctx.cfg)
    n = task_eval.samples if task_eval is not None else 1
    if len(prompts) == 0:
        raise ValueError("no held-out prompts to evaluate on")
    rows, counted = eval_rows(len(prompts), dist.rank, dist.world_size)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ctx.cfg.seed + 7919 + dist.rank)
        # One generate call for all of this rank's prompts: the actor is gathered once, and generation
        # still runs `chunk` prompts at a time.
        batch = prompts.collate([prompts[i] for i in rows]).to(engines.actor.device)
        rollout = generate_rollout(engines.actor, engines.hybrid, batch.input_ids, batch.attention_mask,
                                   settings, tok.eos_token_id, tok.pad_token_id, chunk, n)
    mine = [records[i] for i in rows for _ in range(n)]         # row g * n + s: sample s of prompt g
    reward, parts = score_rollout_rewards(sources, tok, rollout, mine)
    keep = counted * n                                          # the padding rows come last
    decoded = decode_responses(tok, rollout)
    sums = {"reward": float(reward[:keep].double().sum()), "length": float(rollout.action_mask[:keep].sum()),
            "prompts": float(counted), "gold": 0.0}
    if ctx.gold_reward_fn is not None:
        sums["gold"] = float(sum(ctx.gold_reward_fn([last_user_text(r) for r in mine[:keep]], decoded[:keep])))
    if task_eval is not None:
        # A rank holding only padding still scores one group, weighted 0: every rank sends the same names.
        scored = max(counted, 1)
        groups = [decoded[g * n:(g + 1) * n] for g in range(scored)]
        figures = task_eval.score(groups, columns_from_meta([records[i].meta for i in rows[:scored]]))
        sums.update({f"task/{k}": v * counted for k, v in figures.items()})
    t = reduce_sums(sums)
    prompts_n = max(1.0, t["prompts"])
    samples = prompts_n * n
    out = {"eval_reward": t["reward"] / samples, "eval_response_length": t["length"] / samples,
           "eval_prompts": int(prompts_n), **{f"eval_{k}": v for k, v in source_means(_first_rows(parts, keep)).items()}}
    if ctx.gold_reward_fn is not None:
        out["eval_gold_reward"] = t["gold"] / samples
    if task_eval is not None:
        out["eval_samples_per_prompt"] = n
        out.update({f"eval_{k[len('task/'):]}": v / prompts_n for k, v in t.items() if k.startswith("task/")})
    return out


def eval_summary(cfg, figures: Dict[str, float], when: str) -> Dict[str, float]:
    """The summary keys of the task's evaluation figures (`<name>_<when>`, e.g. accuracy_sft), from an
    evaluate_policy result; empty when the task defines none."""
    task_eval = sample_evaluation(cfg)
    if task_eval is None:
        return {}
    return {f"{name}_{when}": figures[f"eval_{name}"] for name in task_eval.summary if f"eval_{name}" in figures}
