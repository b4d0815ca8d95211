"""Reward-model training: pairwise (Bradley-Terry) or K-wise ranking loss on scalar scores, on the stage
loop (stage_loop.py: plan, sampler, engine, resume, evaluation, best model, export).

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

from typing import Dict, Optional

import torch

from ..data.dataset import RankingDataset
from ..engine import all_reduce_sum
from ..models.scalar_head import ScalarHeadModel
from ..rl import kendall_tau, kwise_ranking_loss, pairwise_ranking_loss, spearman_rho
from .common import RunContext, eval_batches
from .data_prep import report_truncation, train_eval_records
from .lora_setup import scalar_lm
from .stage_loop import Stage, run_stage


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


def reward_stage(ctx: RunContext, init_path: str, data_path: str) -> Stage:
    """The reward stage: its data, model, loss and evaluation (see the module docstring)."""
    cfg, c, log = ctx.cfg, ctx.cfg.reward, ctx.log
    # 1. data (a pair is a ranking of two with the chosen first)
    kind = "ranking"     # accepts every preference format too, as rankings of two
    train_recs, eval_recs = train_eval_records(data_path, c.eval_path, kind, c.data_format, cfg.data.skip_invalid,
                                               cfg.data.eval_fraction, cfg.seed, log, "reward data")
    train_ds = RankingDataset(train_recs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length)
    eval_ds = RankingDataset(eval_recs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length)
    report_truncation(train_ds, log, "reward train")

    # 2. model
    def model():
        m = ScalarHeadModel(scalar_lm(ctx, init_path, "reward", cfg.model.gradient_checkpointing))
        if c.freeze_reward_backbone:
            freeze_backbone(m)
        return m

    # 3. loss, normalised by the number of prompts over all ranks
    def loss(engine, part, prepared):
        value, stats = ranking_loss(group_scores(engine, part), part, c.loss, c.margin, c.batch_size)
        return value, {"accuracy": float(stats.get("accuracy", 0.0)) * len(part),
                       "margin": float(stats.get("margin", stats.get("mean_margin", 0.0))) * len(part)}

    def result(steps, best):
        # The exported model's figures (rm_eval_accuracy, rm_eval_margin, ...), not the last evaluation's.
        return {"rm_steps": steps, **{f"rm_{k}": v for k, v in best.items()}}

    return Stage(schedule=c, train_data=train_ds, eval_data=eval_ds, model=model, loss=loss,
                 evaluate=lambda engine, micro: evaluate_reward(engine, eval_ds, micro, ctx.dist),
                 metric="eval_accuracy", higher_is_better=True, export_head="model", result=result,
                 describe=", backbone frozen" if c.freeze_reward_backbone else "")


def train_reward(ctx: RunContext, init_path: str, data_path: str, out_dir: Optional[str] = None) -> Dict[str, float]:
    return run_stage(ctx, "reward", out_dir or ctx.path("reward_model"),
                     lambda: reward_stage(ctx, init_path, data_path))
