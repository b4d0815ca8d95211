"""The RL loop that PPO and the critic-free family (GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++, GSPO)
share. An algorithm is a configuration of it (`ppo` section; the recipes are in config_schema.py):

    deepspeed launch/train_grpo.py --deepspeed configs/zero3.json                  # the GRPO demo
    deepspeed launch/train_ppo.py --deepspeed configs/zero3.json --ppo.advantage_estimator=rloo \
        --ppo.n_samples=4 --ppo.minibatch_size=64                                     # RLOO

One iteration:
 1. prompts: this rank's share of `rollout_batch_size` prompts
 2. generate `n_samples` completions per prompt (hybrid engine)
 3. rewards through the reward sources, shaped (normalise, clip, no-EOS score, overlong penalty);
    with dynamic sampling, groups whose rewards are all equal are dropped and 1-3 repeat
 4. old log-probs (actor), reference log-probs (only with a KL term), values (only with a critic)
 5. token rewards (KL in the reward when so configured) -> the advantage estimator
 6. `ppo_epochs` passes over minibatches: clipped policy loss (+ entropy, + KL loss, + ptx), value loss
 7. KL controller, metrics, checkpoint

Simplifications, stated up front:
- A reward model must share the policy's tokenizer: sequences are scored as token ids, not
  decoded and re-encoded (checked at start-up by comparing vocabularies).
- One scalar reward per response, credited to its last token (Ziegler et al. 2019); no
  per-token process rewards.
- Each rank samples its own share of the prompts (all `n` samples of a prompt on the rank that
  drew it) and never waits for the others while generating; minibatches are drawn within a rank's
  share.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..config import RESUME_SCOPE, ConfigError
from ..data.dataset import PromptDataset, SFTDataset
from ..data.records import PromptRecord
from ..engine import CheckpointManager, GenerationSettings, barrier, export_pretrained, seed_everything
from ..logging import progress
from ..rl import AdaptiveKLController, FixedKLController, RunningMoments
from ..rl.advantages import AdvantageEstimator, advantage_estimator
from .common import BatchPlan, RunContext, ShardedSampler, mark_finished, plan_batches, resume_preflight, resume_state
from .data_prep import load_stage_records, report_truncation, split_records
from .ema import ShardedEMA
from .ops import token_ops
from .rl_engines import RLEngines, build_rl_engines
from .rl_eval import eval_summary, evaluate_policy
from .rl_experience import Experience, advantages_step, loss_mask, score_rollout
from .rl_metrics import reduce_sums
from .rl_onestep import score_with_update_forward, shares_forward
from .rl_rewards import (build_reward_sources, decode_responses, last_user_text, score_rollout_rewards, shape_scores,
                         source_means, uses_reward_model)
from .rl_sampling import Draw, generate_rollout, sample_groups, sampling_metrics
from .rl_samples import training_samples
from .rl_update import UpdateSettings, rl_update

# Held-out prompts per generate call at evaluation: fixed, so that every algorithm's evaluation draws the same
# random numbers (the batch a sample is drawn in decides which numbers it gets) and the SFT policy's
# figures agree across algorithms.
EVAL_CHUNK = 16
# What a resume compares with the checkpoint's configuration: PPO's scope, whichever algorithm, and the
# reward sources.
RL_RESUME_SCOPE = tuple(RESUME_SCOPE["ppo"]) + ("rewards",)
# The stage name (outputs in save_dir/<name>/, metrics, checkpoints, the summary's `algorithm`) of each
# estimator when `ppo.algorithm` is not set.
ALGORITHM_NAMES = {"gae": "ppo", "grpo": "grpo", "dr_grpo": "dr_grpo", "rloo": "rloo", "reinforce_pp": "reinforce_pp",
                   "reinforce_pp_baseline": "reinforce_pp_baseline"}


def algorithm_name(p) -> str:
    if p.algorithm:
        return p.algorithm
    if p.importance_ratio == "sequence" and p.advantage_estimator == "grpo":
        return "gspo"
    return ALGORITHM_NAMES[p.advantage_estimator]


def generation_settings(cfg) -> GenerationSettings:
    g = cfg.generation
    return GenerationSettings(max_new_tokens=g.max_new_tokens, min_new_tokens=g.min_new_tokens,
                              temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, do_sample=g.do_sample)


@dataclass(frozen=True)
class RLPlan:
    """Batch sizes of one iteration: prompts, completions (prompts x n), optimizer steps."""
    prompts_per_rank: int
    n: int
    minibatch: BatchPlan          # completions per optimizer step, split over ranks and micro-batches
    steps_per_iteration: int

    @property
    def completions_per_rank(self) -> int:
        return self.prompts_per_rank * self.n


def plan_rl(p, world: int) -> RLPlan:
    """The batch plan, or a ConfigError that says which number to change."""
    n = p.n_samples
    if p.rollout_batch_size % world:
        raise ConfigError(f"ppo.rollout_batch_size ({p.rollout_batch_size} prompts) must be divisible by the {world} "
                          f"ranks (every rank samples its own prompts); change ppo.rollout_batch_size")
    completions = p.rollout_batch_size * n
    if completions % p.minibatch_size:
        raise ConfigError(f"ppo.minibatch_size ({p.minibatch_size} completions) must divide the "
                          f"{completions} completions of a rollout (ppo.rollout_batch_size {p.rollout_batch_size} "
                          f"prompts x ppo.n_samples {n}); change ppo.minibatch_size")
    try:
        mb = plan_batches(p.minibatch_size, p.micro_batch_size, world, "ppo.minibatch_size (completions)")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return RLPlan(prompts_per_rank=p.rollout_batch_size // world, n=n, minibatch=mb,
                  steps_per_iteration=p.ppo_epochs * (completions // p.minibatch_size))


def check_algorithm(p, estimator: AdvantageEstimator) -> None:
    if estimator.uses_groups and p.n_samples < max(2, estimator.min_group_size):
        raise ConfigError(f"ppo.advantage_estimator={estimator.name} compares the samples of a prompt: set "
                          f"ppo.n_samples >= 2 (it is {p.n_samples})")
    if p.dynamic_sampling and p.n_samples < 2:
        raise ConfigError("ppo.dynamic_sampling drops prompts whose samples all got the same reward: set "
                          "ppo.n_samples >= 2")
    if p.kl_mode == "off" and p.adaptive_kl:
        raise ConfigError("ppo.adaptive_kl adapts the KL coefficient, but ppo.kl_mode=off uses no KL term")


def train_rl(ctx: RunContext, sft_path: str, reward_path: Optional[str], prompt_path: str,
             eval_prompt_path: Optional[str] = None, ptx_path: Optional[str] = None) -> Dict[str, float]:
    cfg, p, dist, log, tok = ctx.cfg, ctx.cfg.ppo, ctx.dist, ctx.log, ctx.tokenizer
    t_start = time.time()
    estimator = advantage_estimator(p.advantage_estimator)
    check_algorithm(p, estimator)
    stage = algorithm_name(p)
    out_dir = ctx.path(stage)
    ckpt = CheckpointManager(os.path.join(cfg.save_dir, "checkpoints", stage))
    done = resume_preflight(ctx, ckpt, stage, [out_dir], config_scope=RL_RESUME_SCOPE)   # a finished stage stays
    if done is not None:
        return done
    needs_reference = p.kl_mode != "off"
    needs_reward_model = uses_reward_model(cfg)
    if needs_reward_model:
        from ..rewards.reward_model import check_same_vocabulary
        check_same_vocabulary(tok, reward_path)

    # 0. data: training prompts, held-out prompts, optional ptx data
    data = load_rl_data(ctx, stage, prompt_path, eval_prompt_path, ptx_path)
    records, prompts, eval_records, eval_prompts, ptx_ds = (data.records, data.prompts, data.eval_records,
                                                             data.eval_prompts, data.ptx)

    # 0. batch plan: `rollout_batch_size` prompts x `n_samples` completions, optimizer steps of `minibatch_size`
    plan = plan_rl(p, dist.world_size)
    mb = plan.minibatch
    total_steps = p.iterations * plan.steps_per_iteration
    if plan.steps_per_iteration == 1:
        log.warning(f"{stage}: ppo_epochs=1 with a single minibatch per rollout: the policy is updated once on data "
                    f"it generated itself, so the ratio is exactly 1 and the clip never acts (plain policy "
                    f"gradient); raise ppo_epochs or lower minibatch_size to use the clip")

    # 0. engines: the actor always; critic, reference and reward model only when used
    ops = token_ops(p.use_kernels)
    engines = build_rl_engines(ctx, sft_path, reward_path, mb.micro, mb.grad_accum, total_steps,
                               p.warmup_iterations * plan.steps_per_iteration, estimator.needs_critic, needs_reference,
                               needs_reward_model, ops)
    actor, critic = engines.actor, engines.critic
    sources = build_reward_sources(ctx, engines.reward, mb.micro)
    settings = generation_settings(cfg)
    kl_ctl = (AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.adaptive_kl
              else FixedKLController(p.kl_coef))
    moments = RunningMoments() if p.reward_normalize else None
    ema = ShardedEMA(actor.module, p.ema_beta) if p.ema_beta > 0 else None
    sampler = ShardedSampler(len(prompts), p.rollout_batch_size, dist.rank, dist.world_size, cfg.seed)
    ptx_sampler = (ShardedSampler(len(ptx_ds), mb.global_batch, dist.rank, dist.world_size, cfg.seed + 1)
                   if ptx_ds is not None else None)
    log.info(f"{stage}: {p.iterations} iterations of {p.rollout_batch_size} prompts x {plan.n} samples, "
             f"{plan.steps_per_iteration} optimizer steps each ({p.ppo_epochs} epochs x "
             f"{plan.prompts_per_rank * plan.n * dist.world_size // p.minibatch_size} minibatches of "
             f"{p.minibatch_size}); advantages: {estimator.name}; models: actor"
             + (", critic" if critic else "") + (", reference" if engines.reference else "")
             + (", reward model" if engines.reward else "")
             + f"; generation: {'hybrid engine' if engines.hybrid else 'plain ZeRO generate'}; "
             f"per-token ops: {ops.name}")

    # 0. resume
    start, summary = 0, {}
    state = resume_state(ctx, ckpt, engines.trained, stage, sampler, position_key="iteration",
                         config_scope=RL_RESUME_SCOPE)
    if state is not None:
        start, summary = state["iteration"], state["summary"]
        kl_ctl.load_state_dict(state["kl_controller"])
        if moments is not None:
            moments.load_state_dict(state["moments"])
        if ptx_sampler is not None:
            ptx_sampler.load_state_dict(state["ptx_sampler"])
        if ema is not None:
            ema.load_state_dict(state["_extra"]["ema"])

    def ptx_batches():
        # A sampler batch holds one minibatch's worth of rows (micro x grad_accum per rank): its micro
        # parts go to the minibatch's micro-steps in turn.
        while True:
            rows = ptx_sampler.next_indices()
            for part in ptx_ds.collate([ptx_ds[i] for i in rows]).split(mb.micro):
                yield part.to(actor.device)

    def evaluate():
        return evaluate_policy(ctx, engines, sources, eval_prompts, eval_records, settings, EVAL_CHUNK)

    def draw() -> Draw:
        # 1. this rank's prompts; 2. n completions each; 3. rewards, shaped
        rows = sampler.next_indices()
        batch = prompts.collate([prompts[i] for i in rows]).to(actor.device)
        with ctx.timer.phase("generation"):
            rollout = generate_rollout(actor, engines.hybrid, batch.input_ids, batch.attention_mask, settings,
                                       tok.eos_token_id, tok.pad_token_id, plan.completions_per_rank, plan.n)
        with ctx.timer.phase("rewards"):
            per_row = [records[i] for i in rows for _ in range(plan.n)]
            raw, parts = score_rollout_rewards(sources, tok, rollout, per_row)
            scores = shape_scores(raw, rollout, p, moments, settings.max_new_tokens)
        return Draw(rollout=rollout, scores=scores, raw=raw, parts=parts, rows=[i for i in rows for _ in range(plan.n)])

    if start == 0:
        # Each rank samples its own stream (a resumed run restores these states from the checkpoint).
        seed_everything(cfg.seed + 1 + dist.rank)
        first = evaluate()
        summary = {"gold_reward_sft": first.get("eval_gold_reward"), "reward_sft": first["eval_reward"],
                   **eval_summary(cfg, first, "sft")}       # the task's own figures (accuracy_sft, ...)
        if dist.is_main:
            ctx.metrics.log(stage, 0, first)
        log.info(f"{stage}: before training " + ", ".join(f"{k}={v:.4g}" for k, v in first.items()))

    # 1-7. the iterations. One optimizer step of one micro-batch per iteration: steps 4 and 6 share the
    # actor's (and critic's) forward (rl_onestep.py).
    one_step = shares_forward(plan.steps_per_iteration, mb.grad_accum)
    bar = progress(total=p.iterations, desc=stage, enabled=ctx.progress_enabled, initial=start)
    tokens_total, work_s = summary.get("tokens_total", 0), summary.get("work_s", 0.0)
    last_kl = summary.get("kl_final")
    for it in range(start, p.iterations):
        timer = ctx.timer
        sampled = sample_groups(draw, plan.n, plan.prompts_per_rank, p.dynamic_sampling, p.max_extra_batches,  # 1-3.
                                tok.pad_token_id)
        d, rollout = sampled.draw, sampled.draw.rollout
        rollout = rollout.to(actor.device)
        upd_settings = update_settings(p, plan, settings, it, kl_ctl.value, cfg.seed, tok.eos_token_id)
        shared = None
        with timer.phase("experience"):
            if one_step:     # 4. with the update's own actor/critic forward (rl_onestep.py)
                scored, shared = score_with_update_forward(rollout, actor, engines.reference, critic, mb.micro,
                                                           upd_settings)
            else:                                                                                      # 4.
                scored = score_rollout(rollout, actor, engines.reference, critic, mb.micro, settings.temperature,
                                       settings.min_new_tokens, tok.eos_token_id)
            scores = d.scores.to(actor.device)
            adv = advantages_step(scores, scored, rollout.action_mask, estimator, ops, p, kl_ctl.value, plan.n)  # 5.
            exp = Experience(sequences=rollout.sequences, attention_mask=rollout.attention_mask,
                             action_mask=loss_mask(rollout, p.mask_truncated), old_logprobs=scored.old_logprobs,
                             advantages=adv.advantages, ref_logprobs=scored.ref_logprobs,
                             old_values=scored.values, returns=adv.returns)
        with timer.phase("training"):                                                                   # 6.
            upd = rl_update(exp, actor, critic, upd_settings, ptx_batches if ptx_ds is not None else None,
                            ema.update if ema is not None else None, shared=shared)
            del shared          # the kept activations go with it
        # 7. KL controller, on the mean per-sequence KL of this rollout (all ranks); the iteration's figures
        totals = rollout_totals(rollout, d, scores, adv.kl)
        n = totals["sequences"]
        seq_kl = totals["kl"] / n
        if needs_reference:
            kl_ctl.update(seq_kl, n_steps=int(n))
            last_kl = seq_kl
        phases = timer.pop()
        tokens_total += int(totals["tokens"])
        work_s += sum(phases.values())
        metrics = iteration_metrics(totals, phases, d, sampled, actor, critic,
                                    {"kl": seq_kl, "kl_coef": kl_ctl.value} if needs_reference else {})
        metrics.update(upd)
        if ctx.gold_reward_fn is not None:
            gold = ctx.gold_reward_fn([last_user_text(records[i]) for i in d.rows], decode_responses(tok, rollout))
            metrics["gold_reward"] = reduce_sums({"gold": float(sum(gold))})["gold"] / n
        last_eval = {}
        if p.eval_interval and (it + 1) % p.eval_interval == 0 and it + 1 < p.iterations:
            last_eval = evaluate()
            metrics.update(last_eval)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}",
                        **({"kl": f"{seq_kl:.3f}"} if needs_reference else {}),
                        **({"gold": f"{metrics['gold_reward']:.3f}"} if "gold_reward" in metrics else {}))
        if dist.is_main and ((it + 1) % cfg.logging.log_interval == 0 or it + 1 == p.iterations or last_eval):
            ctx.metrics.log(stage, it + 1, metrics)
        if dist.is_main and cfg.logging.sample_interval and (it + 1) % cfg.logging.sample_interval == 0:
            ctx.metrics.log_samples(stage, it + 1, training_samples(tok, records, d, cfg.logging.num_samples))
        summary.update(tokens_total=tokens_total, work_s=work_s, kl_final=last_kl)
        if cfg.save_interval and (it + 1) % cfg.save_interval == 0 and it + 1 < p.iterations:
            state = {"iteration": it + 1, "sampler": sampler.state_dict(), "kl_controller": kl_ctl.state_dict(),
                     "moments": moments.state_dict() if moments is not None else None,
                     "ptx_sampler": ptx_sampler.state_dict() if ptx_sampler is not None else None,
                     "summary": summary}
            ckpt.save(f"iter{it + 1}", engines.trained, state,
                      extra={"ema": ema.state_dict()} if ema is not None else None)
    bar.close()

    # final evaluation and export
    final = evaluate()
    if dist.is_main:
        ctx.metrics.log(stage, p.iterations, {f"final_{k}": v for k, v in final.items()})
    export_pretrained(actor, "lm", out_dir, tok, {"stage": stage, "iterations": p.iterations, **final})
    if ema is not None:
        with ema.swapped_in():
            export_pretrained(actor, "lm", out_dir + "_ema", tok, {"stage": f"{stage}-ema", "beta": p.ema_beta})
    barrier()
    engines.destroy()
    summary = finish_summary(summary, stage, final, last_kl, tokens_total, work_s, time.time() - t_start,
                             p.iterations)
    summary.update(eval_summary(cfg, final, "final"))
    mark_finished(ctx, ckpt, stage, p.iterations, summary, position_key="iteration")
    return summary


@dataclass
class RLData:
    records: List[PromptRecord]            # training prompts
    prompts: PromptDataset
    eval_records: List[PromptRecord]       # held-out prompts
    eval_prompts: PromptDataset
    ptx: Optional[SFTDataset]              # the pretraining (SFT) mix, when ppo.ptx_coef > 0


def load_rl_data(ctx: RunContext, stage: str, prompt_path: str, eval_prompt_path: Optional[str],
                 ptx_path: Optional[str]) -> RLData:
    """Training and held-out prompts (a held-out share of the training file when no eval path is given)
    and the ptx data, tokenized."""
    cfg, log, tok = ctx.cfg, ctx.log, ctx.tokenizer
    records = load_stage_records(prompt_path, "prompt", None, cfg.data.skip_invalid, log, f"{stage} prompts")
    if eval_prompt_path:
        eval_records = load_stage_records(eval_prompt_path, "prompt", None, cfg.data.skip_invalid, log,
                                          f"{stage} eval prompts", held_out=True, train_path=prompt_path)
    else:
        records, eval_records = split_records(records, cfg.data.eval_fraction, cfg.seed,
                                              min_eval=ctx.dist.world_size)
    prompts = PromptDataset(records, tok, cfg.data.max_prompt_length)
    report_truncation(prompts, log, f"{stage} prompts")
    ptx = None
    if cfg.ppo.ptx_coef > 0:
        ptx_records = load_stage_records(ptx_path, "sft", None, cfg.data.skip_invalid, log, "ptx data")
        ptx = SFTDataset(ptx_records, tok, cfg.data.max_length, cfg.data.max_prompt_length)
    return RLData(records=records, prompts=prompts, eval_records=eval_records,
                  eval_prompts=PromptDataset(eval_records, tok, cfg.data.max_prompt_length), ptx=ptx)


def rollout_totals(rollout, draw: Draw, scores: torch.Tensor, kl: torch.Tensor) -> Dict[str, float]:
    """The sums an iteration reports, over all ranks."""
    raw = draw.raw.double()
    return reduce_sums({"kl": float(kl.sum()), "sequences": float(len(rollout.action_mask)),
                        "reward": float(raw.sum()), "reward_sq": float((raw ** 2).sum()),
                        "score": float(scores.double().sum()), "tokens": float(rollout.action_mask.sum()),
                        "ended": float(rollout.ended.sum())})


def iteration_metrics(totals: Dict[str, float], phases: Dict[str, float], draw: Draw, sampled, actor, critic,
                      kl: Dict[str, float]) -> Dict[str, float]:
    """What an iteration logs besides the update's statistics: rewards (combined, per source, after
    shaping), sampling (zero-spread groups, dropped groups), lengths, KL, learning rates, timings."""
    n = totals["sequences"]
    reward_mean = totals["reward"] / n
    work = sum(phases.values())
    return {"reward_mean": reward_mean,
            "reward_std": math.sqrt(max(0.0, totals["reward_sq"] / n - reward_mean ** 2)),
            "score_mean": totals["score"] / n, **source_means(draw.parts), **sampling_metrics(sampled),
            "response_length": totals["tokens"] / n, "eos_fraction": totals["ended"] / n,
            "truncation_rate": 1.0 - totals["ended"] / n, **kl, "lr_actor": actor.lr,
            **({"lr_critic": critic.lr} if critic is not None else {}),
            **{f"time_{k}": v for k, v in phases.items()},
            "tokens_per_s": totals["tokens"] / max(1e-9, work),
            "generation_tokens_per_s": totals["tokens"] / max(1e-9, phases.get("generation", 0.0))}


def update_settings(p, plan: RLPlan, settings: GenerationSettings, iteration: int, kl_coef: float,
                    seed: int, eos_token_id: Optional[int] = None) -> UpdateSettings:
    return UpdateSettings(
        ppo_epochs=p.ppo_epochs, minibatch_per_rank=plan.minibatch.per_rank, micro=plan.minibatch.micro,
        clip_range=p.clip_range, dual_clip=p.dual_clip, value_clip=p.value_clip, entropy_coef=p.entropy_coef,
        temperature=settings.temperature, ptx_coef=p.ptx_coef, seed=seed + iteration,
        clip_range_low=p.clip_range_low, clip_range_high=p.clip_range_high, importance_ratio=p.importance_ratio,
        loss_aggregation=p.loss_aggregation, max_length=settings.max_new_tokens,
        kl_loss_coef=kl_coef if p.kl_mode == "loss" else 0.0, kl_loss_estimator=p.kl_loss_estimator,
        min_new_tokens=settings.min_new_tokens, eos_token_id=eos_token_id)


def finish_summary(summary: Dict, stage: str, final: Dict[str, float], last_kl: Optional[float], tokens_total: int,
                   work_s: float, wall_s: float, iterations: int) -> Dict:
    """The figures every RL algorithm reports (logs/summary.json); PPO keeps its earlier key names too."""
    summary.update({"algorithm": stage, "gold_reward_final": final.get("eval_gold_reward"),
                    "reward_final": final["eval_reward"], "kl_final": last_kl,
                    "tokens_per_s": tokens_total / max(1e-9, work_s), "rl_wall_time_s": wall_s,
                    "iterations": iterations})
    if stage == "ppo":
        summary.update({"gold_reward_ppo": summary["gold_reward_final"], "ppo_tokens_per_s": summary["tokens_per_s"],
                        "ppo_wall_time_s": wall_s, "ppo_iterations": iterations})
    return summary
