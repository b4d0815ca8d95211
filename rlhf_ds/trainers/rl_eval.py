"""Evaluation of the RL policy on held-out prompts: reward (through the same sources as training),
gold reward when the task has one, response length.

One sample per prompt, at the training temperature, from a fixed seed and without disturbing the
training random stream: the SFT policy (before the first update) and the final policy are compared
on the same prompts with the same random numbers.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from ..data.dataset import PromptDataset
from ..data.records import PromptRecord
from ..engine import GenerationSettings
from .common import RunContext
from .rl_metrics import reduce_sums
from .rl_rewards import Sources, decode_responses, last_user_text, score_rollout_rewards, source_means
from .rl_sampling import generate_rollout


@torch.no_grad()
def evaluate_policy(ctx: RunContext, engines, sources: Sources, prompts: PromptDataset, records: List[PromptRecord],
                    settings: GenerationSettings, chunk: int) -> Dict[str, float]:
    dist, tok = ctx.dist, ctx.tokenizer
    per_rank = len(prompts) // dist.world_size      # equal shares keep collective forwards in step
    if per_rank == 0:
        raise ValueError(f"{len(prompts)} held-out prompts for {dist.world_size} ranks: every rank needs one")
    rows = list(range(dist.rank * per_rank, (dist.rank + 1) * per_rank))
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ctx.cfg.seed + 7919 + dist.rank)
        # One generate call for all of this rank's prompts: the actor is gathered once, and generation
        # still runs `chunk` prompts at a time.
        batch = prompts.collate([prompts[i] for i in rows]).to(engines.actor.device)
        rollout = generate_rollout(engines.actor, engines.hybrid, batch.input_ids, batch.attention_mask,
                                   settings, tok.eos_token_id, tok.pad_token_id, chunk)
    mine = [records[i] for i in rows]
    reward, parts = score_rollout_rewards(sources, tok, rollout, mine)
    sums = {"reward": float(reward.double().sum()), "length": float(rollout.action_mask.sum()),
            "prompts": float(len(rows)), "gold": 0.0}
    if ctx.gold_reward_fn is not None:
        sums["gold"] = float(sum(ctx.gold_reward_fn([last_user_text(r) for r in mine],
                                                    decode_responses(tok, rollout))))
    t = reduce_sums(sums)
    n = max(1.0, t["prompts"])
    out = {"eval_reward": t["reward"] / n, "eval_response_length": t["length"] / n, "eval_prompts": int(n),
           **{f"eval_{k}": v for k, v in source_means(parts).items()}}
    if ctx.gold_reward_fn is not None:
        out["eval_gold_reward"] = t["gold"] / n
    return out
