"""Supervised fine-tuning: next-token loss on response (assistant) tokens only, on the stage loop
(stage_loop.py: plan, sampler, engine, resume, evaluation, best model, export).

1. load and split the data, tokenize with the chat template (labels -100 off-target)
2. the policy model (ZeRO-3 shards from the first allocation)
3. per global batch: the target-token count over all ranks; per micro-batch, loss = sum of target-token
   NLL / that global count
4. evaluate loss and perplexity every `eval_interval` steps (and at each epoch end)
5. export the best model (lowest eval loss; the last one when there is no eval data) to `sft/` and the
   last one to `sft/last/`

With `--resume`, a stage that had finished is not run again: `sft/` stays as it is.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from ..data.dataset import SFTDataset
from ..engine import all_reduce_sum
from ..models.policy import PolicyModel
from .common import RunContext, eval_batches
from .data_prep import report_truncation, train_eval_records
from .lora_setup import causal_lm
from .ops import token_ops
from .stage_loop import Stage, run_stage


def sft_token_loss(engine, batch, num_tokens) -> torch.Tensor:
    """Sum over target tokens of -log p, divided by `num_tokens` (the global target count)."""
    out = engine(batch.input_ids, batch.attention_mask)
    targets = batch.labels[:, 1:] != -100
    return -(out["logprobs"] * targets).sum() / num_tokens


@torch.no_grad()
def evaluate_sft(engine, dataset, micro: int, dist) -> Dict[str, float]:
    """Mean NLL per target token over the whole eval set (all ranks) and its perplexity."""
    engine.eval()
    nll, tokens = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for batch, counted in eval_batches(dataset, micro, dist, engine.device):
        out = engine(batch.input_ids, batch.attention_mask)
        if not counted:
            continue
        targets = batch.labels[:, 1:] != -100
        nll += -(out["logprobs"] * targets).sum().double().cpu()
        tokens += targets.sum().double().cpu()
    engine.train()
    totals = all_reduce_sum(torch.stack([nll, tokens]))
    loss = float(totals[0] / totals[1].clamp(min=1))
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": int(totals[1])}


def sft_stage(ctx: RunContext, init_path: str, data_path: str) -> Stage:
    """The SFT stage: its data, model, loss and evaluation (see the module docstring)."""
    cfg, c, log = ctx.cfg, ctx.cfg.sft, ctx.log
    # 1. data
    train_recs, eval_recs = train_eval_records(data_path, c.eval_path, "sft", c.data_format, cfg.data.skip_invalid,
                                               cfg.data.eval_fraction, cfg.seed, log, "sft data")
    train_ds = SFTDataset(train_recs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length)
    eval_ds = SFTDataset(eval_recs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length)
    report_truncation(train_ds, log, "sft train")
    # 2. model
    ops = token_ops(cfg.ppo.use_kernels)

    def model():
        return PolicyModel(causal_lm(ctx, init_path, "sft", cfg.model.gradient_checkpointing), ops,
                           fused_head=cfg.model.fused_lm_head)

    # 3. loss over the global target-token count
    def prepare(engine, batch):
        local = (batch.labels[:, 1:] != -100).sum()
        return {"tokens": all_reduce_sum(local.double()).clamp(min=1.0)}

    def loss(engine, part, prepared):
        return sft_token_loss(engine, part, prepared["tokens"]), {}

    def result(steps, best):
        out = {"sft_steps": steps}
        if best:
            out.update(sft_eval_loss=best["eval_loss"], sft_eval_ppl=math.exp(min(best["eval_loss"], 50.0)))
        return out

    return Stage(schedule=c, train_data=train_ds, eval_data=eval_ds, model=model, loss=loss, prepare=prepare,
                 rate="tokens", evaluate=lambda engine, micro: evaluate_sft(engine, eval_ds, micro, ctx.dist),
                 metric="eval_loss", higher_is_better=False, keep_last=True, result=result)


def train_sft(ctx: RunContext, init_path: str, data_path: str, out_dir: Optional[str] = None) -> Dict[str, float]:
    return run_stage(ctx, "sft", out_dir or ctx.path("sft"), lambda: sft_stage(ctx, init_path, data_path))
