"""PPO for language models, actor and critic trained and reference and reward held by DeepSpeed.

One iteration:
 1. generate responses with the hybrid engine (gathered, hook-free weights, KV cache)
 2. score: actor (old) and reference log-probs, critic values, reward-model scores
 3. KL-shaped per-token rewards (score at the last response token, -beta * KL on every one)
 4. GAE advantages and returns
 5. whiten advantages over the whole rollout (all ranks)
 6. `ppo_epochs` passes over minibatches: clipped policy loss (+ entropy, + ptx), clipped value loss
 7. update the KL controller

Simplifications, stated up front:
- The reward model must share the policy's tokenizer: sequences are scored as token ids, not
  decoded and re-encoded (checked at start-up by comparing vocabularies).
- One scalar reward per response, credited to its last token (Ziegler et al. 2019); no
  per-token process rewards.
- Each rank samples its own share of the prompts and never waits for the others while
  generating; minibatches are drawn within a rank's share.
- Evaluation samples with the training temperature from a fixed seed, so the SFT policy and
  the PPO policy are compared on the same prompts with the same random stream.
"""
from __future__ import annotations

import math
import os
import time
from typing import Dict, List, Optional

import torch

from ..data.dataset import PromptDataset, SFTDataset
from ..engine import (CheckpointManager, GenerationSettings, HybridEngine, all_reduce_sum, barrier,
                      build_inference_engine, build_train_engine, export_pretrained, seed_everything, zero_stage)
from ..logging import progress
from ..models.policy import PolicyModel
from ..models.scalar_head import ScalarHeadModel
from ..rl import AdaptiveKLController, FixedKLController, RunningMoments
from .common import RunContext, ShardedSampler, plan_batches, resume_state
from .data_prep import load_stage_records, report_truncation, split_records
from .ema import ShardedEMA
from .lora_setup import ReferenceFromActor, RewardFromCritic, causal_lm, check_ppo_lora, critic_model, scalar_lm
from .ops import token_ops
from .ppo_experience import Experience, generate_rollout, global_whiten, score_rollout
from .ppo_update import UpdateSettings, ppo_update
from .rl_engines import no_dropout


def generation_settings(cfg) -> GenerationSettings:
    g = cfg.generation
    return GenerationSettings(max_new_tokens=g.max_new_tokens, min_new_tokens=g.min_new_tokens,
                              temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, do_sample=g.do_sample)


def shape_scores(raw: torch.Tensor, ended: torch.Tensor, p, moments: Optional[RunningMoments]) -> torch.Tensor:
    """Reward-model scores -> the scores PPO optimises: normalise (running moments over all ranks),
    clip to [-c, c], then give responses without EOS the fixed `no_eos_penalty`."""
    scores = raw.float()
    if moments is not None:
        total, total_sq, n = all_reduce_sum(torch.stack([scores.sum(), (scores * scores).sum(),
                                                         torch.tensor(float(len(scores)))]).double()).tolist()
        mean = total / n
        moments.update_from_moments(n, mean, max(0.0, total_sq - n * mean * mean))
        std = moments.std if moments.count > 1 else 1.0
        scores = (scores - moments.mean) / max(std, 1e-6)
    if p.reward_clip is not None:
        scores = scores.clamp(-p.reward_clip, p.reward_clip)
    if p.no_eos_penalty is not None:
        scores = torch.where(ended, scores, torch.full_like(scores, float(p.no_eos_penalty)))
    return scores


def decode_responses(tokenizer, rollout) -> List[str]:
    p = rollout.sequences.shape[1] - rollout.response_length
    out = []
    for ids, mask in zip(rollout.sequences[:, p:], rollout.action_mask):
        out.append(tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True))
    return out


@torch.no_grad()
def evaluate_policy(ctx: RunContext, actor, hybrid, reward, prompts: PromptDataset, user_texts: List[str],
                    settings: GenerationSettings, chunk: int) -> Dict[str, float]:
    """Mean gold reward (when the task has one), reward-model score and response length on held-out
    prompts, sampled from a fixed seed without disturbing the training random stream."""
    dist, tok = ctx.dist, ctx.tokenizer
    per_rank = len(prompts) // dist.world_size      # equal shares keep collective forwards in step
    rows = list(range(dist.rank * per_rank, (dist.rank + 1) * per_rank))
    sums = torch.zeros(4, dtype=torch.float64)       # gold, rm score, length, count
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ctx.cfg.seed + 7919 + dist.rank)
        if rows:
            # One generate_rollout for all of this rank's prompts: the actor is gathered once, and
            # generation still runs `chunk` prompts at a time.
            batch = prompts.collate([prompts[i] for i in rows]).to(actor.device)
            rollout = generate_rollout(actor, hybrid, batch.input_ids, batch.attention_mask, settings,
                                       tok.eos_token_id, tok.pad_token_id, chunk)
            for part in rollout.split(chunk):
                sums[1] += reward(part.sequences, part.attention_mask)["scores"].double().sum().cpu()
            sums[2] += rollout.action_mask.sum().double().cpu()
            sums[3] += len(rows)
            if ctx.gold_reward_fn is not None:
                responses = decode_responses(tok, rollout)
                sums[0] += sum(ctx.gold_reward_fn([user_texts[i] for i in rows], responses))
    t = all_reduce_sum(sums)
    n = max(1.0, float(t[3]))
    out = {"eval_rm_score": float(t[1] / n), "eval_response_length": float(t[2] / n), "eval_prompts": int(n)}
    if ctx.gold_reward_fn is not None:
        out["eval_gold_reward"] = float(t[0] / n)
    return out


def _last_user_text(record) -> str:
    users = [m.content for m in record.messages if m.role == "user"]
    return users[-1] if users else record.messages[-1].content


def _check_same_vocab(tokenizer, reward_path: str) -> None:
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(reward_path)
    if other.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"the reward model at {reward_path} uses a different tokenizer than the policy; rlhf_ds "
                         f"scores token ids directly, so both must share one vocabulary")


def train_ppo(ctx: RunContext, sft_path: str, reward_path: str, prompt_path: str,
              eval_prompt_path: Optional[str] = None, ptx_path: Optional[str] = None,
              out_dir: Optional[str] = None) -> Dict[str, float]:
    cfg, p, dist, log, tok = ctx.cfg, ctx.cfg.ppo, ctx.dist, ctx.log, ctx.tokenizer
    out_dir = out_dir or ctx.path("ppo")
    t_start = time.time()
    _check_same_vocab(tok, reward_path)

    # 0. data: training prompts, held-out prompts, optional ptx data
    records = load_stage_records(prompt_path, "prompt", None, cfg.data.skip_invalid, log, "ppo prompts")
    if eval_prompt_path:
        eval_records = load_stage_records(eval_prompt_path, "prompt", None, cfg.data.skip_invalid, log,
                                          "ppo eval prompts")
    else:
        records, eval_records = split_records(records, cfg.data.eval_fraction, cfg.seed, min_eval=dist.world_size)
    prompts = PromptDataset(records, tok, cfg.data.max_prompt_length)
    eval_prompts = PromptDataset(eval_records, tok, cfg.data.max_prompt_length)
    report_truncation(prompts, log, "ppo prompts")
    user_texts = [_last_user_text(r) for r in records]
    eval_user_texts = [_last_user_text(r) for r in eval_records]
    ptx_ds = None
    if p.ptx_coef > 0:
        ptx_recs = load_stage_records(ptx_path, "sft", None, cfg.data.skip_invalid, log, "ptx data")
        ptx_ds = SFTDataset(ptx_recs, tok, cfg.data.max_length, cfg.data.max_prompt_length)

    # 0. batch plan: a rollout of `rollout_batch_size` prompts, optimizer steps of `minibatch_size`
    mb_plan = plan_batches(p.minibatch_size, p.micro_batch_size, dist.world_size, "ppo minibatch")
    rollout_per_rank = p.rollout_batch_size // dist.world_size
    if p.rollout_batch_size % dist.world_size:
        raise ValueError(f"ppo.rollout_batch_size ({p.rollout_batch_size}) must be divisible by the "
                         f"{dist.world_size} ranks")
    steps_per_iter = p.ppo_epochs * (p.rollout_batch_size // p.minibatch_size)
    total_steps = p.iterations * steps_per_iter
    if steps_per_iter == 1:
        log.warning("ppo: ppo_epochs=1 with a single minibatch per rollout: the policy is updated once on data "
                    "it generated itself, so the ratio is exactly 1 and the clip never acts (plain policy "
                    "gradient); raise ppo_epochs or lower minibatch_size to use PPO's clip")

    # 0. engines: actor and critic train, reference and reward only score
    ops = token_ops(p.use_kernels)
    mc = cfg.model
    critic_path = reward_path if mc.critic_init == "reward" else sft_path
    lora = check_ppo_lora(ctx, zero_stage(ctx.ds_config))

    def train_engine(name, factory, lr):
        return build_train_engine(name, factory, ctx.ds_config, micro_batch_size=mb_plan.micro,
                                  grad_accum=mb_plan.grad_accum, precision=ctx.precision,
                                  gradient_clipping=cfg.deepspeed.gradient_clipping, lr=lr,
                                  weight_decay=p.weight_decay, total_steps=total_steps,
                                  warmup_steps=p.warmup_iterations * steps_per_iter, schedule="constant",
                                  source=str(cfg.deepspeed.config), seed=cfg.seed,
                                  lr_overrides=lora.lr_overrides())

    def policy():
        return PolicyModel(causal_lm(ctx, sft_path, "actor", mc.gradient_checkpointing), ops,
                           fused_head=mc.fused_lm_head)

    def scalar(path, role):
        return lambda: ScalarHeadModel(scalar_lm(ctx, path, role))

    actor = train_engine("actor", no_dropout(policy), p.policy_lr)
    critic = train_engine("critic", no_dropout(lambda: critic_model(ctx, critic_path, reward_path,
                                                                    mc.gradient_checkpointing)), p.value_lr)
    inference = dict(micro_batch_size=mb_plan.micro, precision=ctx.precision,
                     offload_params=cfg.deepspeed.offload_inference)
    # With LoRA on a frozen base the reference (and optionally the reward) come from the trained engines.
    ref = ReferenceFromActor(actor) if lora.reference_is_actor else build_inference_engine(
        "reference", lambda: PolicyModel(causal_lm(ctx, sft_path, "reference"), ops, fused_head=mc.fused_lm_head),
        ctx.ds_config, **inference)
    reward = RewardFromCritic(critic) if lora.reward_is_critic else build_inference_engine(
        "reward", scalar(reward_path, "reward_frozen"), ctx.ds_config, seed=cfg.seed, **inference)
    hybrid = HybridEngine(actor, cfg.hybrid.gather_bucket_mb, cfg.hybrid.keep_gathered) if cfg.hybrid.enabled else None
    settings = generation_settings(cfg)
    kl_ctl = (AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.adaptive_kl
              else FixedKLController(p.kl_coef))
    moments = RunningMoments() if p.reward_normalize else None
    ema = ShardedEMA(actor.module, p.ema_beta) if p.ema_beta > 0 else None
    sampler = ShardedSampler(len(prompts), p.rollout_batch_size, dist.rank, dist.world_size, cfg.seed)
    ptx_sampler = (ShardedSampler(len(ptx_ds), mb_plan.global_batch, dist.rank, dist.world_size, cfg.seed + 1)
                   if ptx_ds is not None else None)
    log.info(f"ppo: {p.iterations} iterations of {p.rollout_batch_size} prompts, {steps_per_iter} optimizer "
             f"steps each ({p.ppo_epochs} epochs x {p.rollout_batch_size // p.minibatch_size} minibatches of "
             f"{p.minibatch_size}); generation: {'hybrid engine' if hybrid else 'plain ZeRO generate'}; "
             f"per-token ops: {ops.name}")

    # 0. resume
    ckpt = CheckpointManager(os.path.join(cfg.save_dir, "checkpoints", "ppo"))
    start, summary = 0, {}
    state = resume_state(ctx, ckpt, {"actor": actor, "critic": critic}, "ppo", sampler, position_key="iteration")
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
        # parts go to the minibatch's micro-steps in turn, none collated and then dropped.
        while True:
            rows = ptx_sampler.next_indices()
            for part in ptx_ds.collate([ptx_ds[i] for i in rows]).split(mb_plan.micro):
                yield part.to(actor.device)

    def evaluate():
        return evaluate_policy(ctx, actor, hybrid, reward, eval_prompts, eval_user_texts, settings, mb_plan.micro)

    if start == 0:
        # Each rank samples its own stream (a resumed run restores these states from the checkpoint).
        seed_everything(cfg.seed + 1 + dist.rank)
        first = evaluate()
        summary = {"gold_reward_sft": first.get("eval_gold_reward"), "rm_score_sft": first["eval_rm_score"]}
        if dist.is_main:
            ctx.metrics.log("ppo", 0, first)
        log.info("ppo: before training " + ", ".join(f"{k}={v:.4g}" for k, v in first.items()))

    # 1-7. the PPO iterations
    bar = progress(total=p.iterations, desc="ppo", enabled=ctx.progress_enabled, initial=start)
    tokens_total, work_s = summary.get("tokens_total", 0), summary.get("work_s", 0.0)
    last_eval, last_kl = {}, summary.get("kl_final")
    for it in range(start, p.iterations):
        timer = ctx.timer
        rows = sampler.next_indices()
        batch = prompts.collate([prompts[i] for i in rows]).to(actor.device)
        with timer.phase("generation"):                                               # 1.
            rollout = generate_rollout(actor, hybrid, batch.input_ids, batch.attention_mask, settings,
                                       tok.eos_token_id, tok.pad_token_id, rollout_per_rank)
        with timer.phase("experience"):
            old_lp, ref_lp, values, raw = score_rollout(rollout, actor, ref, critic, reward,   # 2.
                                                       mb_plan.micro, settings.temperature)
            scores = shape_scores(raw, rollout.ended, p, moments)
            mask = rollout.action_mask
            rewards, kl = ops.kl_shaped_rewards(scores, old_lp, ref_lp, mask, kl_ctl.value,   # 3.
                                                p.kl_estimator)
            advantages, returns = ops.gae(rewards, values, mask, p.gamma, p.lam)         # 4.
            if p.whiten_advantages:                                                     # 5.
                advantages = global_whiten(advantages, mask)
            exp = Experience(sequences=rollout.sequences, attention_mask=rollout.attention_mask, action_mask=mask,
                             old_logprobs=old_lp, ref_logprobs=ref_lp, old_values=values, rewards=rewards, kl=kl,
                             advantages=advantages, returns=returns, scores=scores, raw_scores=raw)
        with timer.phase("training"):                                                   # 6.
            upd = ppo_update(exp, actor, critic, UpdateSettings(
                ppo_epochs=p.ppo_epochs, minibatch_per_rank=p.minibatch_size // dist.world_size,
                micro=mb_plan.micro, clip_range=p.clip_range, dual_clip=p.dual_clip, value_clip=p.value_clip,
                entropy_coef=p.entropy_coef, temperature=settings.temperature, ptx_coef=p.ptx_coef,
                seed=cfg.seed + it), ptx_batches if ptx_ds is not None else None,
                ema.update if ema is not None else None)
        # 7. KL controller, on the mean per-sequence KL of this rollout (all ranks)
        sums = all_reduce_sum(torch.stack([kl.sum(dim=1).sum().double(), torch.tensor(float(len(kl))).double(),
                                           raw.double().sum(), (raw.double() ** 2).sum(),
                                           mask.sum().double(), rollout.ended.double().sum()]))
        n = float(sums[1])
        seq_kl = float(sums[0] / n)
        kl_ctl.update(seq_kl, n_steps=int(n))
        last_kl = seq_kl
        phases = timer.pop()
        tokens_total += int(sums[4])
        work_s += sum(phases.values())
        metrics = {"reward_mean": float(sums[2] / n),
                   "reward_std": math.sqrt(max(0.0, float(sums[3] / n) - float(sums[2] / n) ** 2)),
                   "kl": seq_kl, "kl_coef": kl_ctl.value, "response_length": float(sums[4] / n),
                   "eos_fraction": float(sums[5] / n), "lr_actor": actor.lr, "lr_critic": critic.lr,
                   **{f"time_{k}": v for k, v in phases.items()},
                   "tokens_per_s": float(sums[4]) / max(1e-9, sum(phases.values())),
                   "generation_tokens_per_s": float(sums[4]) / max(1e-9, phases.get("generation", 0.0))}
        metrics.update(upd)
        if ctx.gold_reward_fn is not None:
            gold_sum = sum(ctx.gold_reward_fn([user_texts[i] for i in rows], decode_responses(tok, rollout)))
            metrics["gold_reward"] = float(all_reduce_sum(torch.tensor(gold_sum, dtype=torch.float64))) / n
        if p.eval_interval and (it + 1) % p.eval_interval == 0 and it + 1 < p.iterations:
            last_eval = evaluate()
            metrics.update(last_eval)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{seq_kl:.3f}",
                        **({"gold": f"{metrics['gold_reward']:.3f}"} if "gold_reward" in metrics else {}))
        if dist.is_main and ((it + 1) % cfg.logging.log_interval == 0 or it + 1 == p.iterations or last_eval):
            ctx.metrics.log("ppo", it + 1, metrics)
        summary.update(tokens_total=tokens_total, work_s=work_s, kl_final=last_kl)
        if cfg.save_interval and (it + 1) % cfg.save_interval == 0 and it + 1 < p.iterations:
            state = {"iteration": it + 1, "sampler": sampler.state_dict(), "kl_controller": kl_ctl.state_dict(),
                     "moments": moments.state_dict() if moments is not None else None,
                     "ptx_sampler": ptx_sampler.state_dict() if ptx_sampler is not None else None,
                     "summary": summary}
            ckpt.save(f"iter{it + 1}", {"actor": actor, "critic": critic}, state,
                      extra={"ema": ema.state_dict()} if ema is not None else None)
        last_eval = {}
    bar.close()

    # final evaluation and export
    final = evaluate()
    if dist.is_main:
        ctx.metrics.log("ppo", p.iterations, {f"final_{k}": v for k, v in final.items()})
    export_pretrained(actor, "lm", out_dir, tok, {"stage": "ppo", "iterations": p.iterations, **final})
    if ema is not None:
        with ema.swapped_in():
            export_pretrained(actor, "lm", out_dir + "_ema", tok, {"stage": "ppo-ema", "beta": p.ema_beta})
    barrier()
    for e in (actor, critic, ref, reward):
        e.destroy()
    summary.update({"gold_reward_ppo": final.get("eval_gold_reward"), "rm_score_ppo": final["eval_rm_score"],
                    "kl_final": last_kl, "ppo_tokens_per_s": tokens_total / max(1e-9, work_s),
                    "ppo_wall_time_s": time.time() - t_start, "ppo_iterations": p.iterations})
    return summary

