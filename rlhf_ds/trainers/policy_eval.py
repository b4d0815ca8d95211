"""A policy trained offline (DPO, KTO), evaluated on held-out prompts the way the RL loop evaluates its own:
`rl_eval.evaluate_policy` samples one response per prompt at the generation settings from a fixed seed,
so the SFT policy (before training) and the final one answer the same prompts with the same random
numbers, and reports the gold reward (the demo) and the response length. Its one reward source here is
the KL to the reference, so the final policy's KL to the SFT policy comes from the same samples:
`sum_t log pi(y_t | ...) - log pi_ref(y_t | ...)` over each response, averaged over the prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..data.dataset import PromptDataset
from ..engine import HybridEngine
from ..rewards import RewardBatch, SourceScores
from .common import RunContext
from .data_prep import load_stage_records
from .rl_eval import evaluate_policy
from .rl_loop import generation_settings


class KLToReference:
    """A reward source whose value is each response's summed log-ratio to the reference, at the sampling
    temperature (the distributions sampled from). Collective: every rank calls it in step."""

    name = "kl"

    def __init__(self, actor, reference, temperature: float, micro: int):
        self.actor, self.reference, self.temperature, self.micro = actor, reference, temperature, micro

    @torch.no_grad()
    def __call__(self, batch: RewardBatch) -> SourceScores:
        r = batch.action_mask.shape[1]
        out = []
        for s in range(0, len(batch), self.micro):
            seqs = batch.sequences[s:s + self.micro].to(self.actor.device)
            attn = batch.attention_mask[s:s + self.micro].to(self.actor.device)
            mask = batch.action_mask[s:s + self.micro].to(self.actor.device).bool()
            policy = self.actor(seqs, attn, num_scored=r, temperature=self.temperature)["logprobs"]
            ref = self.reference(seqs, attn, num_scored=r, temperature=self.temperature)["logprobs"]
            out.append(torch.where(mask, policy - ref, torch.zeros_like(policy)).sum(dim=1).float().cpu())
        return SourceScores.everywhere(torch.cat(out))


@dataclass
class _Engines:            # what evaluate_policy reads of the RL loop's engines
    actor: object
    hybrid: Optional[HybridEngine]


class HeldOutPrompts:
    """Held-out prompts (a file, or the demo's), evaluated before training and at the end."""

    def __init__(self, ctx: RunContext, path: str, micro: int, what: str = "dpo eval prompts"):
        cfg = ctx.cfg
        self.ctx, self.micro = ctx, micro
        self.records: List = load_stage_records(path, "prompt", None, cfg.data.skip_invalid, ctx.log, what)
        self.prompts = PromptDataset(self.records, ctx.tokenizer, cfg.data.max_prompt_length)
        self.settings = generation_settings(cfg)

    def evaluate(self, actor, reference=None) -> Dict[str, float]:
        """eval_gold_reward (when the task has one), eval_response_length, and eval_kl when `reference` (a
        model that scores like the actor: an engine, or ReferenceFromActor) is given."""
        cfg = self.ctx.cfg
        # A generation copy for this call only (nothing kept between the two evaluations).
        hybrid = HybridEngine(actor, cfg.hybrid.gather_bucket_mb) if cfg.hybrid.enabled else None
        sources = []
        if reference is not None:
            sources = [(KLToReference(actor, reference, self.settings.temperature, self.micro), 1.0)]
        actor.eval()
        try:
            out = evaluate_policy(self.ctx, _Engines(actor, hybrid), sources, self.prompts, self.records,
                                  self.settings, self.micro)
        finally:
            actor.train()
        result = {k: out[k] for k in ("eval_gold_reward", "eval_response_length", "eval_prompts") if k in out}
        if reference is not None:
            result["eval_kl"] = out["eval_reward"]
        return result
