"""Supervised fine-tuning: next-token loss on response (assistant) tokens only.

1. load and split the data, tokenize with the chat template (labels -100 off-target)
2. build the policy engine (ZeRO-3 shards from the first allocation)
3. for each global batch: micro-batches, loss = sum of target-token NLL / global target tokens
4. evaluate loss and perplexity every `eval_interval` steps (and at each epoch end)
5. export the best model (lowest eval loss; the last one when there is no eval data) to `sft/` and the
   last one to `sft/last/`

With `--resume`, a stage that had finished is not run again: `sft/` stays as it is.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from typing import Dict, Optional

import torch

from ..data.dataset import SFTDataset
from ..engine import CheckpointManager, all_reduce_sum, barrier, build_train_engine, export_pretrained
from ..logging import progress
from ..models.policy import PolicyModel
from .common import (RunContext, ShardedSampler, eval_batches, mark_finished, plan_batches, publish_best,
                     resume_preflight, resume_state)
from .data_prep import report_truncation, train_eval_records
from .lora_setup import causal_lm, lora_settings
from .ops import token_ops


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


def train_sft(ctx: RunContext, init_path: str, data_path: str, out_dir: Optional[str] = None) -> Dict[str, float]:
    cfg, c, dist, log = ctx.cfg, ctx.cfg.sft, ctx.dist, ctx.log
    out_dir = out_dir or ctx.path("sft")
    ckpt = CheckpointManager(os.path.join(cfg.save_dir, "checkpoints", "sft"))
    done = resume_preflight(ctx, ckpt, "sft", [out_dir])
    if done is not None:
        return done
    # 1. data
    train_recs, eval_recs = train_eval_records(data_path, c.eval_path, "sft", c.data_format, cfg.data.skip_invalid,
                                               cfg.data.eval_fraction, cfg.seed, log, "sft data")
    train_ds = SFTDataset(train_recs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length)
    eval_ds = SFTDataset(eval_recs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length)
    report_truncation(train_ds, log, "sft train")
    has_eval = len(eval_ds) > 0
    if not has_eval:
        # The best of nothing would be the first model evaluated, and its loss a mean over no tokens.
        log.warning(f"sft: no eval data (data.eval_fraction={cfg.data.eval_fraction}, sft.eval_path="
                    f"{c.eval_path}): no evaluation, and the last model is exported as {out_dir}")
    plan = plan_batches(c.batch_size, c.micro_batch_size, dist.world_size, "sft")
    sampler = ShardedSampler(len(train_ds), c.batch_size, dist.rank, dist.world_size, cfg.seed)
    total = c.max_steps or max(1, int(c.epochs * sampler.batches_per_epoch))
    eval_every = c.eval_interval or sampler.batches_per_epoch
    # 2. engine
    ops = token_ops(cfg.ppo.use_kernels)
    engine = build_train_engine(
        "sft", lambda: PolicyModel(causal_lm(ctx, init_path, "sft", cfg.model.gradient_checkpointing),
                                   ops, fused_head=cfg.model.fused_lm_head),
        ctx.ds_config, micro_batch_size=plan.micro, grad_accum=plan.grad_accum, precision=ctx.precision,
        gradient_clipping=cfg.deepspeed.gradient_clipping, lr=c.learning_rate, weight_decay=c.weight_decay,
        total_steps=total, warmup_steps=int(c.warmup_ratio * total), schedule=c.lr_scheduler,
        source=str(cfg.deepspeed.config), lr_overrides=lora_settings(cfg).lr_overrides())
    log.info(f"sft: {len(train_ds)} train / {len(eval_ds)} eval records, {total} steps of {c.batch_size} "
             f"({plan.world} ranks x {plan.grad_accum} x {plan.micro})")
    state = resume_state(ctx, ckpt, {"sft": engine}, "sft", sampler)
    step, best = (state["step"], state["best_eval_loss"]) if state else (0, float("inf"))
    if state is None and dist.is_main:
        shutil.rmtree(out_dir + ".best", ignore_errors=True)   # left by an earlier run that did not finish
    # 3. train
    bar = progress(total=total, desc="sft", enabled=ctx.progress_enabled, initial=step)
    t0, tokens_seen, last_eval = time.time(), 0, {}
    while step < total:
        rows = sampler.next_indices()
        batch = train_ds.collate([train_ds[i] for i in rows]).to(engine.device)
        local_tokens = (batch.labels[:, 1:] != -100).sum()
        global_tokens = all_reduce_sum(local_tokens.double()).clamp(min=1.0)
        loss_sum = 0.0
        for part in batch.split(plan.micro):
            loss = sft_token_loss(engine, part, global_tokens)
            engine.backward(loss)
            engine.step()
            loss_sum += float(loss.detach())
        step += 1
        tokens_seen += int(global_tokens)
        bar.update(1)
        train_loss = float(all_reduce_sum(torch.tensor(loss_sum)))
        metrics = {"loss": train_loss, "lr": engine.lr, "epoch": sampler.epoch + sampler.batch / sampler.batches_per_epoch,
                   "tokens_per_s": tokens_seen / max(1e-9, time.time() - t0)}
        if engine.global_grad_norm is not None:
            metrics["grad_norm"] = engine.global_grad_norm
        # 4. evaluate, keep the best
        if has_eval and (step % eval_every == 0 or step == total):
            last_eval = evaluate_sft(engine, eval_ds, plan.micro, dist)
            metrics.update(last_eval)
            bar.set_postfix(loss=f"{train_loss:.3f}", eval=f"{last_eval['eval_loss']:.3f}")
            if last_eval["eval_loss"] < best:
                best = last_eval["eval_loss"]
                export_pretrained(engine, "lm", out_dir + ".best", ctx.tokenizer,
                                  {"stage": "sft", "step": step, **last_eval})
        if step % cfg.logging.log_interval == 0 or step == total or "eval_loss" in metrics:
            if dist.is_main:
                ctx.metrics.log("sft", step, metrics)
        if cfg.save_interval and step % cfg.save_interval == 0 and step < total:
            ckpt.save(f"step{step}", {"sft": engine}, {"step": step, "best_eval_loss": best,
                                                       "sampler": sampler.state_dict()})
    bar.close()
    # 5. export: the best model becomes sft/ (the last one without eval data), the last one sft/last/
    meta = {"stage": "sft", "step": step, **last_eval}
    if has_eval:
        export_pretrained(engine, "lm", out_dir + ".last", ctx.tokenizer, meta)
    else:
        export_pretrained(engine, "lm", out_dir + ".best", ctx.tokenizer, {**meta, "selected": "last, no eval data"})
    if dist.is_main:
        if not has_eval:
            shutil.rmtree(out_dir + ".last", ignore_errors=True)
            shutil.copytree(out_dir + ".best", out_dir + ".last")
        publish_best(out_dir, resumed=state is not None, last=out_dir + ".last")
    barrier()
    engine.destroy()
    result = {"sft_steps": step}
    if has_eval:
        result.update(sft_eval_loss=best, sft_eval_ppl=math.exp(min(best, 50.0)))
        log.info(f"sft: done in {time.time() - t0:.0f}s, best eval loss {best:.4f} (ppl {result['sft_eval_ppl']:.2f})")
    else:
        log.info(f"sft: done in {time.time() - t0:.0f}s, no evaluation: the last model (step {step}) is {out_dir}")
    mark_finished(ctx, ckpt, "sft", step, result)
    return result
