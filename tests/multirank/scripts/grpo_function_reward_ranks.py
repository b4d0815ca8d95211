"""One GRPO iteration of the RL loop's own steps 3-6 on fixed completions, rewarded by the arithmetic
task's rule rewards (Python function sources exact_match + format_reward, reading the prompt records'
`answer` column): rewards -> old and reference log-probs -> group advantages -> two epochs of the
clipped update with the KL loss. Each rank takes its contiguous share of the groups, as the loop does;
rank 0 writes the actor's weights and the figures. Run on 1 rank with gradient accumulation and on 2
ranks, the results must agree.
Usage: grpo_function_reward_ranks.py TASK_DIR OUT_PREFIX MICRO"""
import json
import os
import sys

import torch

from rlhf_ds.data.dataset import PromptDataset
from rlhf_ds.engine import init_distributed, load_ds_config, shutdown_distributed
from rlhf_ds.logging import MetricsLogger, get_logger
from rlhf_ds.models.loading import load_tokenizer
from rlhf_ds.pipeline import pipeline_config
from rlhf_ds.rl import advantage_estimator
from rlhf_ds.trainers.common import RunContext
from rlhf_ds.trainers.data_prep import load_stage_records
from rlhf_ds.trainers.ops import token_ops
from rlhf_ds.trainers.rl_engines import build_rl_engines
from rlhf_ds.trainers.rl_experience import Experience, advantages_step, score_rollout
from rlhf_ds.trainers.rl_loop import generation_settings, plan_rl, update_settings
from rlhf_ds.trainers.rl_metrics import reduce_sums
from rlhf_ds.trainers.rl_rewards import (build_reward_sources, decode_responses, score_rollout_rewards, shape_scores,
                                         source_means)
from rlhf_ds.trainers.rl_sampling import Rollout
from rlhf_ds.trainers.rl_update import rl_update

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]   # the launcher adds it
task_dir, out_prefix, micro = args[0], args[1], int(args[2])
GROUPS, N = 4, 4
info = init_distributed("cpu")
cfg = pipeline_config(None, ["--task=arithmetic", f"--save_dir={os.path.dirname(out_prefix)}",
                             f"--ppo.rollout_batch_size={GROUPS}", f"--ppo.n_samples={N}",
                             f"--ppo.minibatch_size={GROUPS * N}", f"--ppo.micro_batch_size={micro}",
                             "--ppo.ppo_epochs=2", "--ppo.policy_lr=1e-3", "--deepspeed.gradient_clipping=0"],
                      recipe="grpo")
p = cfg.ppo
tok = load_tokenizer(os.path.join(task_dir, "tokenizer"))
log = get_logger("warning", info.rank)
ctx = RunContext(cfg=cfg, dist=info, ds_config=load_ds_config("zero3"), precision="fp32", log=log,
                 metrics=MetricsLogger(os.path.dirname(out_prefix), enabled=False, tensorboard=False), tokenizer=tok)
plan = plan_rl(p, info.world_size)
estimator = advantage_estimator(p.advantage_estimator)
ops = token_ops(p.use_kernels)
engines = build_rl_engines(ctx, os.path.join(task_dir, "base_model"), None, plan.minibatch.micro,
                           plan.minibatch.grad_accum, total_steps=plan.steps_per_iteration, warmup_steps=0,
                           needs_critic=False, needs_reference=True, needs_reward_model=False, ops=ops)
sources = build_reward_sources(ctx, None, plan.minibatch.micro)

# The global batch, the same on every rank: GROUPS questions x N completions each, of every kind the
# rewards tell apart (right, wrong number, right number in another form), in a different order per group.
records = load_stage_records(os.path.join(task_dir, "data", "prompts.jsonl"), "prompt", None, False, log,
                             "prompts")[:GROUPS]
kinds = ["answer: {}", "answer: {}1", "the answer is {}.", "answer: {}"]
texts = [kinds[(g + s) % N].format(r.meta["answer"]) for g, r in enumerate(records) for s in range(N)]
prompts = PromptDataset(records, tok, cfg.data.max_prompt_length)
batch = prompts.collate([prompts[g] for g in range(GROUPS) for _ in range(N)])
responses = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
r = max(map(len, responses))
resp = torch.full((len(texts), r), tok.pad_token_id)
action = torch.zeros(len(texts), r, dtype=torch.long)
for i, ids in enumerate(responses):
    resp[i, :len(ids)] = torch.tensor(ids)
    action[i, :len(ids)] = 1
rollout = Rollout(sequences=torch.cat([batch.input_ids, resp], 1),
                  attention_mask=torch.cat([batch.attention_mask.long(), action], 1),
                  action_mask=action, ended=torch.ones(len(texts), dtype=torch.bool))
per_rank = len(texts) // info.world_size
mine = list(range(info.rank * per_rank, (info.rank + 1) * per_rank))      # whole groups: N divides per_rank
rollout = rollout.index(mine)
assert decode_responses(tok, rollout) == [texts[i] for i in mine]

# 3. rewards, 4. log-probs, 5. advantages, 6. update: the loop's own functions
per_row = [records[i // N] for i in mine]
raw, parts = score_rollout_rewards(sources, tok, rollout, per_row)
scores = shape_scores(raw, rollout, p, None, cfg.generation.max_new_tokens)
actor = engines.actor
scored = score_rollout(rollout, actor, engines.reference, None, plan.minibatch.micro, 1.0)
adv = advantages_step(scores, scored, rollout.action_mask, estimator, ops, p, p.kl_coef, N)
exp = Experience(sequences=rollout.sequences, attention_mask=rollout.attention_mask, action_mask=rollout.action_mask,
                 old_logprobs=scored.old_logprobs, advantages=adv.advantages, ref_logprobs=scored.ref_logprobs)
stats = rl_update(exp, actor, None, update_settings(p, plan, generation_settings(cfg), 0, p.kl_coef, cfg.seed), None)
stats.update(source_means(parts))
stats.update({f"sum_{k}": v for k, v in reduce_sums({"raw": float(raw.double().sum()),
                                                      "advantage": float(adv.advantages.abs().double().sum())}).items()})
stats["actor_grad_norm"] = actor.global_grad_norm
weights = actor.full_state_dict()
if info.is_main:
    torch.save({k[len("lm."):]: v for k, v in weights.items()}, f"{out_prefix}.pt")   # the HF model's names
    with open(f"{out_prefix}.json", "w") as f:
        json.dump(stats, f)
engines.destroy()
shutdown_distributed()   # every rank exits cleanly (a gloo peer that leaves first can abort the other)
