"""Offline preference optimisation on pairs: DPO and its variants (rl/dpo.py), on the stage loop.

    deepspeed launch/train_dpo.py --deepspeed configs/zero3.json [--dpo.loss_type=ipo ...]

1. data: every preference format the reward stage reads; a K-wise ranking gives all its ordered pairs
2. the policy starts from the SFT model (dropout off: the reference scores in eval mode); the
   reference is a frozen engine, the policy with adapters off (LoRA), precomputed log-probs, or none
   (SimPO): see reference.py
3. per micro-batch: chosen and rejected in one concatenated forward `(2B, T)`, summed response
   log-probs, the loss over the global pair count (splitting a batch over ranks changes nothing)
4. evaluation on held-out pairs: loss, implicit rewards of chosen and rejected, their margin,
   preference accuracy, log-probs; the best model by eval loss is exported to `dpo/`
5. held-out prompts (the demo's, or dpo.eval_prompt_path): the gold reward (demo) before training
   and at the end, and the final policy's KL to the SFT policy, sampled as PPO's evaluation is
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import torch

from ..engine import all_reduce_sum
from ..models.policy import PolicyModel
from ..rl import dpo_loss
from ..rl.dpo import REFERENCE_FREE
from .common import RunContext, eval_batches, plan_batches
from .data_prep import report_truncation, train_eval_records
from .lora_setup import causal_lm
from .ops import token_ops
from .policy_eval import HeldOutPrompts
from .preference_data import ResponsesDataset, ranking_pairs
from .reference import LiveReference, precompute_reference, reference_engine, reference_mode, response_logps
from .rl_engines import no_dropout
from .stage_loop import Stage, run_stage

ALGORITHM = {"sigmoid": "dpo", "ipo": "ipo", "conservative": "cdpo", "robust": "rdpo", "hinge": "slic",
             "simpo": "simpo", "kto": "kto"}


def pair_logps(model, batch) -> Dict[str, torch.Tensor]:
    """`(B,)` summed log-probs and token counts of the chosen and rejected responses, from ONE forward
    over both (`(2B, T)`)."""
    b = batch.input_ids.shape[0]
    logps, lengths = response_logps(model, *batch.flat())
    logps, lengths = logps.view(b, 2), lengths.view(b, 2)
    return {"chosen": logps[:, 0], "rejected": logps[:, 1], "chosen_len": lengths[:, 0],
            "rejected_len": lengths[:, 1]}


def policy_model(ctx: RunContext, sft_path: str):
    """The trained policy: the SFT model (with adapters under LoRA), dropout off."""
    cfg = ctx.cfg
    ops = token_ops(cfg.ppo.use_kernels)
    return no_dropout(lambda: PolicyModel(causal_lm(ctx, sft_path, "actor", cfg.model.gradient_checkpointing), ops,
                                          fused_head=cfg.model.fused_lm_head))


class References:
    """Where a batch's reference log-probs come from, for any `reference_mode`."""

    def __init__(self, ctx: RunContext, sft_path: str, datasets: Dict[str, ResponsesDataset], micro: int,
                 reference_free: bool):
        self.ctx, self.sft_path, self.micro = ctx, sft_path, micro
        self.mode = reference_mode(ctx, reference_free)
        self.live = None
        if self.mode == "precomputed":
            stored = precompute_reference(ctx, sft_path, datasets, micro, width=2)
            for name, ds in datasets.items():
                ds.ref = stored[name]
        elif self.mode == "engine":
            self.live = LiveReference(reference_engine(ctx, sft_path, micro))
        elif self.mode == "actor":
            self.live = LiveReference()
        ctx.log.info(f"dpo: reference = {self.describe()}")

    def describe(self) -> str:
        return {"none": "none (reference-free loss)", "actor": "the policy with its LoRA adapters disabled",
                "precomputed": "log-probs computed before training", "engine": "a frozen copy of the SFT model"
                }[self.mode]

    def logps(self, actor, batch) -> Optional[torch.Tensor]:
        """`(B, K)` reference log-probs of every response of the batch (None when reference-free)."""
        if self.mode == "none":
            return None
        if self.mode == "precomputed":
            return batch.ref_logps
        b, k, _ = batch.input_ids.shape
        return self.live.logps(actor, *batch.flat()).view(b, k)

    @contextlib.contextmanager
    def scorer(self, actor):
        """A model that scores sequences as the reference (for the KL of the final policy): the live one, or
        an engine built for the call when the reference was precomputed or is not used (SimPO)."""
        if self.live is not None:
            yield self.live.model(actor)
            return
        engine = reference_engine(self.ctx, self.sft_path, self.micro)
        try:
            yield engine
        finally:
            engine.destroy()

    def destroy(self) -> None:
        if self.live is not None:
            self.live.destroy()


def dpo_loss_of(c, policy: Dict[str, torch.Tensor], ref: Optional[torch.Tensor], num_pairs):
    """rl.dpo_loss with the section's options."""
    return dpo_loss(policy["chosen"], policy["rejected"], None if ref is None else ref[:, 0],
                    None if ref is None else ref[:, 1], beta=c.beta, loss_type=c.loss_type,
                    label_smoothing=c.label_smoothing, gamma=c.simpo_gamma if c.loss_type == "simpo" else 0.0,
                    length_normalize=c.length_normalize, chosen_lengths=policy["chosen_len"],
                    rejected_lengths=policy["rejected_len"], rpo_alpha=c.rpo_alpha, num_pairs=num_pairs)


def _figures(stats: Dict[str, torch.Tensor], policy: Dict[str, torch.Tensor], n: int) -> Dict[str, float]:
    """Sums over the batch's pairs of what is reported (stats are means over them)."""
    out = {k: float(v) * n for k, v in stats.items()}
    out.update(logps_chosen=float(policy["chosen"].detach().sum()),
               logps_rejected=float(policy["rejected"].detach().sum()))
    return out


@torch.no_grad()
def evaluate_pairs(ctx: RunContext, engine, refs: References, dataset: ResponsesDataset,
                   micro: int) -> Dict[str, float]:
    """Over every held-out pair (all ranks): mean loss, implicit rewards, margin, accuracy and log-probs."""
    c = ctx.cfg.dpo
    engine.eval()
    sums: Dict[str, float] = {"pairs": 0.0}
    for batch, counted in eval_batches(dataset, micro, ctx.dist, engine.device):
        policy = pair_logps(engine, batch)
        ref = refs.logps(engine, batch)
        if not counted:
            continue
        n = batch.input_ids.shape[0]
        loss, stats = dpo_loss_of(c, policy, ref, num_pairs=1)       # the sum over the batch's pairs
        for k, v in {"loss": float(loss), **_figures(stats, policy, n)}.items():
            sums[k] = sums.get(k, 0.0) + v
        sums["pairs"] += n
    engine.train()
    names = sorted(sums)
    t = dict(zip(names, all_reduce_sum(torch.tensor([sums.get(k, 0.0) for k in names], dtype=torch.float64)).tolist()))
    n = max(1.0, t.pop("pairs"))
    out = {"eval_loss": t["loss"] / n, "eval_accuracy": t["reward_accuracy"] / n, "eval_margin": t["reward_margin"] / n,
           "eval_rewards_chosen": t["rewards_chosen"] / n, "eval_rewards_rejected": t["rewards_rejected"] / n,
           "eval_logps_chosen": t["logps_chosen"] / n, "eval_logps_rejected": t["logps_rejected"] / n,
           "eval_pairs": int(n)}
    if "nll" in t:
        out["eval_nll"] = t["nll"] / n
    return out


def held_out_hooks(ctx: RunContext, refs: References, eval_prompt_path: Optional[str], micro: int, stage):
    """The stage's `start` and `finish` (stage_loop.Stage) for held-out prompts: the gold reward (the demo) of
    the SFT policy before training, and at the end the last policy's gold reward and KL to the SFT policy.
    `stage()` returns the Stage, whose `state` keeps the first figure across a resume."""
    held_out = HeldOutPrompts(ctx, eval_prompt_path, micro) if eval_prompt_path else None

    def start(engine):
        if held_out is not None:
            first = held_out.evaluate(engine)
            stage().state["gold_reward_sft"] = first.get("eval_gold_reward")
            if ctx.is_main:
                ctx.metrics.log("dpo", 0, first)
            ctx.log.info("dpo: before training " + ", ".join(f"{k}={v:.4g}" for k, v in first.items()))

    def finish(engine, steps):
        out = {}
        if held_out is not None:
            with refs.scorer(engine) as reference:
                final = held_out.evaluate(engine, reference)
            out.update(gold_reward_final=final.get("eval_gold_reward"), kl_final=final.get("eval_kl"),
                       dpo_response_length=final.get("eval_response_length"))
            if ctx.is_main:
                ctx.metrics.log("dpo", steps, {f"final_{k}": v for k, v in final.items()})
            ctx.log.info("dpo: the last model " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()))
        refs.destroy()
        return out

    return start, finish


def dpo_stage(ctx: RunContext, sft_path: str, data_path: str, eval_prompt_path: Optional[str] = None) -> Stage:
    """The DPO stage (see the module docstring); `eval_prompt_path`: held-out prompts sampled before
    training and at the end."""
    cfg, c, log = ctx.cfg, ctx.cfg.dpo, ctx.log
    # 1. data: pairs, and the ordered pairs of each ranking
    train_recs, eval_recs = train_eval_records(data_path, c.eval_path, "ranking", c.data_format, cfg.data.skip_invalid,
                                               cfg.data.eval_fraction, cfg.seed, log, "dpo data")
    train_pairs, eval_pairs = ranking_pairs(train_recs), ranking_pairs(eval_recs)
    if len(train_pairs) != len(train_recs):
        log.info(f"dpo: {len(train_recs)} records give {len(train_pairs)} ordered pairs")
    train_ds = ResponsesDataset(train_pairs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, k=2)
    eval_ds = ResponsesDataset(eval_pairs, ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, k=2)
    report_truncation(train_ds, log, "dpo train")
    # 2. reference (precomputed before the policy exists, so the two are never held together)
    micro = plan_batches(c.batch_size, c.micro_batch_size, ctx.dist.world_size, "dpo").micro
    refs = References(ctx, sft_path, {"train": train_ds, "eval": eval_ds}, micro, c.loss_type in REFERENCE_FREE)

    # 3. loss: one forward over chosen and rejected, normalised by the global pair count
    def loss(engine, part, prepared):
        policy = pair_logps(engine, part)
        value, stats = dpo_loss_of(c, policy, refs.logps(engine, part), c.batch_size)
        return value, _figures(stats, policy, part.input_ids.shape[0])

    def result(steps, best):
        # The exported model's held-out pair figures (dpo_eval_accuracy, ...).
        return {"algorithm": ALGORITHM[c.loss_type], "dpo_steps": steps,
                "gold_reward_sft": stage.state.get("gold_reward_sft"), **{f"dpo_{k}": v for k, v in best.items()}}

    start, finish = held_out_hooks(ctx, refs, eval_prompt_path, micro, lambda: stage)
    stage = Stage(schedule=c, train_data=train_ds, eval_data=eval_ds, model=policy_model(ctx, sft_path), loss=loss,
                  prepare=lambda engine, batch: {"pairs": float(c.batch_size)}, rate="pairs",
                  evaluate=lambda engine, m: evaluate_pairs(ctx, engine, refs, eval_ds, m), metric="eval_loss",
                  higher_is_better=False, result=result, start=start, finish=finish,
                  describe=f", loss {c.loss_type}, beta {c.beta}, reference: {refs.describe()}")
    return stage


def train_dpo(ctx: RunContext, sft_path: str, data_path: str, out_dir: Optional[str] = None,
              eval_prompt_path: Optional[str] = None) -> Dict[str, float]:
    return run_stage(ctx, "dpo", out_dir or ctx.path("dpo"),
                     lambda: dpo_stage(ctx, sft_path, data_path, eval_prompt_path))
