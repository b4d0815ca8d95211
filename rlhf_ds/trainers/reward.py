"""Reward-model training: pairwise (Bradley-Terry) or K-wise ranking loss on scalar scores.

1. load preference pairs and/or K-wise rankings; pairs are rankings with K = 2
2. build the scalar-head engine from the SFT model (a new `score` head on its backbone);
   with `freeze_reward_backbone` only the head (and adapters, if any) train
3. per global batch: scores for all K responses, loss over the ranked pairs, normalised by the
   number of prompts over all ranks (InstructGPT's per-prompt weighting for K-wise)
4. evaluate: preference accuracy over all ranked pairs, mean margin, Kendall tau and Spearman
   rho per prompt (rankings with K > 2)
5. export the best model (highest eval accuracy; the last one when there is no eval data) as an
   AutoModelForSequenceClassification

With `--resume`, a stage that had finished is not run again: `reward_model/` stays as it is.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Dict, Optional

import torch

from ..data.dataset import RankingDataset
from ..engine import CheckpointManager, all_reduce_sum, barrier, build_train_engine, export_pretrained
from ..logging import progress
from ..models.scalar_head import ScalarHeadModel
from ..rl import kendall_tau, kwise_ranking_loss, pairwise_ranking_loss, spearman_rho
from .common import (RunContext, ShardedSampler, eval_batches, mark_finished, plan_batches, publish_best,
                     resume_preflight, resume_state)
from .data_prep import report_truncation, train_eval_records
from .lora_setup import lora_settings, scalar_lm


def group_scores(engine, batch) -> torch.Tensor:
    """`(B, K)` scores of every response in a RankingBatch `(B, K, T)`."""
    b, k, t = batch.input_ids.shape
    out = engine(batch.input_ids.view(b * k, t), batch.attention_mask.view(b * k, t))
    return out["scores"].view(b, k)


def ranking_loss(scores: torch.Tensor, batch, loss_kind: str, margin: float, num_groups) -> tuple:
    """Pairwise loss for complete pairs (K = 2), K-wise otherwise (or when asked). Each record's margin
    (0 without one) plus `margin` applies to its pair, or to every ordered pair of its group when the
    K-wise loss runs (rl/ranking.py), so pairs keep their margins in a batch mixed with rankings."""
    margins = (batch.margins if batch.margins is not None else torch.zeros_like(scores[:, 0].float())) + margin
    complete_pairs = scores.shape[1] == 2 and bool((batch.ranks >= 0).all()) and \
        bool((batch.ranks[:, 0] < batch.ranks[:, 1]).all())
    if loss_kind == "pairwise" or (loss_kind == "auto" and complete_pairs):
        if not complete_pairs:
            raise ValueError("reward.loss=pairwise needs pairs with the chosen response ranked first; this batch "
                             "holds rankings (use reward.loss=kwise or auto)")
        return pairwise_ranking_loss(scores[:, 0], scores[:, 1], margin=margins, num_pairs=num_groups)
    return kwise_ranking_loss(scores, batch.ranks, num_groups=num_groups, margin=margins)


@torch.no_grad()
def evaluate_reward(engine, dataset, micro: int, dist) -> Dict[str, float]:
    """Accuracy and mean margin over every ranked pair of the eval set; rank correlations for K > 2."""
    engine.eval()
    sums = torch.zeros(6, dtype=torch.float64)   # correct, pairs, margin sum, tau sum, rho sum, groups(K>2)
    for batch, counted in eval_batches(dataset, micro, dist, engine.device):
        scores = group_scores(engine, batch).double().cpu()
        if not counted:
            continue
        ranks = batch.ranks.cpu()
        valid = ranks >= 0
        better = (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)
        diff = scores.unsqueeze(2) - scores.unsqueeze(1)          # [b, i, j] = s_i - s_j
        sums[0] += (diff[better] > 0).sum()
        sums[1] += better.sum()
        sums[2] += diff[better].sum()
        multi = valid.sum(dim=1) > 2                              # rank correlations need K > 2
        if multi.any():
            tau = kendall_tau(scores[multi], ranks[multi])
            rho = spearman_rho(scores[multi], ranks[multi])
            ok = ~(tau.isnan() | rho.isnan())                     # groups with all ranks tied have none
            sums[3] += tau[ok].sum()
            sums[4] += rho[ok].sum()
            sums[5] += ok.sum()
    engine.train()
    t = all_reduce_sum(sums)
    out = {"eval_accuracy": float(t[0] / t[1].clamp(min=1)), "eval_margin": float(t[2] / t[1].clamp(min=1)),
           "eval_pairs": int(t[1])}
    if t[5] > 0:
        out.update(eval_kendall_tau=float(t[3] / t[5]), eval_spearman=float(t[4] / t[5]))
    return out


def freeze_backbone(model: ScalarHeadModel) -> int:
    """Leave only the score head (and LoRA adapters) trainable; returns the trainable count."""
    n = 0
    for name, p in model.named_parameters():
        keep = ".score." in f".{name}" or "lora_" in name
        p.requires_grad_(keep)
        n += p.numel() if keep else 0
    return n


def train_reward(ctx: RunContext, init_path: str, data_path: str, out_dir: Optional[str] = None) -> Dict[str, float]:
    cfg, c, dist, log = ctx.cfg, ctx.cfg.reward, ctx.dist, ctx.log
    out_dir = out_dir or ctx.path("reward_model")
    ckpt = CheckpointManager(os.path.join(cfg.save_dir, "checkpoints", "reward"))
    done = resume_preflight(ctx, ckpt, "reward", [out_dir])
    if done is not None:
        return done
    # 1. data (a pair is a ranking of two with the chosen first)
    kind = "ranking"     # accepts every preference format too, as rankings of two
    train_recs, eval_recs = train_eval_records(data_path, c.eval_path, kind, c.data_format, cfg.data.skip_invalid,
                                               cfg.data.eval_fraction, cfg.seed, log, "reward data")
    train_ds = RankingDataset(train_recs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length)
    eval_ds = RankingDataset(eval_recs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length)
    report_truncation(train_ds, log, "reward train")
    has_eval = len(eval_ds) > 0
    if not has_eval:
        # The best of nothing would be the first model evaluated, its accuracy 0 over no pairs.
        log.warning(f"reward: no eval data (data.eval_fraction={cfg.data.eval_fraction}, reward.eval_path="
                    f"{c.eval_path}): no evaluation, and the last model is exported as {out_dir}")
    plan = plan_batches(c.batch_size, c.micro_batch_size, dist.world_size, "reward")
    sampler = ShardedSampler(len(train_ds), c.batch_size, dist.rank, dist.world_size, cfg.seed)
    total = c.max_steps or max(1, int(c.epochs * sampler.batches_per_epoch))
    eval_every = c.eval_interval or sampler.batches_per_epoch

    # 2. engine
    def factory():
        model = ScalarHeadModel(scalar_lm(ctx, init_path, "reward", cfg.model.gradient_checkpointing))
        if c.freeze_reward_backbone:
            freeze_backbone(model)
        return model
    engine = build_train_engine(
        "reward", factory, ctx.ds_config, micro_batch_size=plan.micro, grad_accum=plan.grad_accum,
        precision=ctx.precision, gradient_clipping=cfg.deepspeed.gradient_clipping, lr=c.learning_rate,
        weight_decay=c.weight_decay, total_steps=total, warmup_steps=int(c.warmup_ratio * total),
        schedule=c.lr_scheduler, source=str(cfg.deepspeed.config), seed=cfg.seed,
        lr_overrides=lora_settings(cfg).lr_overrides())
    log.info(f"reward: {len(train_ds)} train / {len(eval_ds)} eval records, {total} steps of {c.batch_size} "
             f"({plan.world} ranks x {plan.grad_accum} x {plan.micro})"
             + (", backbone frozen" if c.freeze_reward_backbone else ""))
    state = resume_state(ctx, ckpt, {"reward": engine}, "reward", sampler)
    step, best = (state["step"], state["best_eval_accuracy"]) if state else (0, -1.0)
    if state is None and dist.is_main:
        shutil.rmtree(out_dir + ".best", ignore_errors=True)   # left by an earlier run that did not finish
    # 3. train
    bar = progress(total=total, desc="reward", enabled=ctx.progress_enabled, initial=step)
    t0, last_eval = time.time(), {}
    while step < total:
        rows = sampler.next_indices()
        batch = train_ds.collate([train_ds[i] for i in rows]).to(engine.device)
        sums = torch.zeros(3, dtype=torch.float64)   # loss, accuracy, margin (per-group sums)
        for part in batch.split(plan.micro):
            loss, stats = ranking_loss(group_scores(engine, part), part, c.loss, c.margin, c.batch_size)
            engine.backward(loss)
            engine.step()
            sums += torch.tensor([float(loss.detach()) * c.batch_size,
                                  float(stats.get("accuracy", 0.0)) * len(part),
                                  float(stats.get("margin", stats.get("mean_margin", 0.0))) * len(part)],
                                 dtype=torch.float64)
        step += 1
        bar.update(1)
        totals = all_reduce_sum(sums) / c.batch_size
        metrics = {"loss": float(totals[0]), "accuracy": float(totals[1]), "margin": float(totals[2]),
                   "lr": engine.lr}
        # 4. evaluate, keep the best
        if has_eval and (step % eval_every == 0 or step == total):
            last_eval = evaluate_reward(engine, eval_ds, plan.micro, dist)
            metrics.update(last_eval)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{last_eval['eval_accuracy']:.3f}")
            if last_eval["eval_accuracy"] > best:
                best = last_eval["eval_accuracy"]
                export_pretrained(engine, "model", out_dir + ".best", ctx.tokenizer,
                                  {"stage": "reward", "step": step, **last_eval})
        if dist.is_main and (step % cfg.logging.log_interval == 0 or step == total or "eval_accuracy" in metrics):
            ctx.metrics.log("reward", step, metrics)
        if cfg.save_interval and step % cfg.save_interval == 0 and step < total:
            ckpt.save(f"step{step}", {"reward": engine}, {"step": step, "best_eval_accuracy": best,
                                                          "sampler": sampler.state_dict()})
    bar.close()
    # 5. export the best (the last model without eval data)
    if not has_eval:
        export_pretrained(engine, "model", out_dir + ".best", ctx.tokenizer,
                          {"stage": "reward", "step": step, "selected": "last, no eval data"})
    if dist.is_main:
        publish_best(out_dir, resumed=state is not None)
    barrier()
    engine.destroy()
    result = {"rm_steps": step}
    if has_eval:
        result.update({f"rm_{k}": v for k, v in last_eval.items()})
        result["rm_eval_accuracy"] = best   # the exported model's, not the last evaluation's
        log.info(f"reward: done in {time.time() - t0:.0f}s, best eval accuracy {best:.3f}")
    else:
        log.info(f"reward: done in {time.time() - t0:.0f}s, no evaluation: the last model (step {step}) is {out_dir}")
    mark_finished(ctx, ckpt, "reward", step, result)
    return result
