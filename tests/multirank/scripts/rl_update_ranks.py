"""One RL update of a fixed global batch, this rank taking its contiguous share; rank 0 writes the
actor's weights afterwards. Run on 1 rank with gradient accumulation and on 2 ranks, the results must
agree.
  MODE ppo:  policy + entropy + ptx losses on the actor, value loss on the critic (random advantages)
  MODE grpo: GRPO advantages of groups of 4 from fixed scores (a rank holds whole groups), the KL loss
             against a reference, per-sequence loss aggregation, clip-higher, ptx; no critic
Usage: rl_update_ranks.py MODEL_DIR OUT_PREFIX MICRO PTX_COEF [MODE]"""
import json
import sys

import torch

from rlhf_ds.data.batch import SFTBatch
from rlhf_ds.engine import build_train_engine, init_distributed, shutdown_distributed
from rlhf_ds.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
from rlhf_ds.models.policy import PolicyModel
from rlhf_ds.models.scalar_head import ScalarHeadModel
from rlhf_ds.rl import ADVANTAGE_ESTIMATORS
from rlhf_ds.trainers.rl_experience import Experience
from rlhf_ds.trainers.rl_update import UpdateSettings, rl_update

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]   # the launcher adds it
model_dir, out_prefix, micro, ptx_coef = args[0], args[1], int(args[2]), float(args[3])
mode = args[4] if len(args) > 4 else "ppo"
info = init_distributed("cpu")
ROWS, P, R, T_PTX = 8, 6, 8, 14
per_rank = ROWS // info.world_size
accum = per_rank // micro
mine = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
tok = load_tokenizer(model_dir)
vocab = len(tok)


def engine(name, factory):
    return build_train_engine(name, factory, {"zero_optimization": {"stage": 3}}, micro_batch_size=micro,
                              grad_accum=accum, precision="fp32", gradient_clipping=0.0, lr=1e-3,
                              weight_decay=0.0, total_steps=1, warmup_steps=0, schedule="constant")


actor = engine("actor", lambda: PolicyModel(load_causal_lm(model_dir, tokenizer=tok)))
critic = (engine("critic", lambda: ScalarHeadModel(load_scalar_model(model_dir, tokenizer=tok))) if mode == "ppo"
          else None)

# The global batch, the same on every rank: left-padded prompts, responses of different lengths.
g = torch.Generator().manual_seed(0)
seqs = torch.randint(5, vocab, (ROWS, P + R), generator=g)
prompt_len = torch.randint(2, P + 1, (ROWS,), generator=g)
resp_len = torch.randint(1, R + 1, (ROWS,), generator=g)
pos = torch.arange(P + R)
attn = ((pos >= P - prompt_len[:, None]) & (pos < P + resp_len[:, None])).long()
action = attn[:, P:].clone()
seqs = torch.where(attn.bool(), seqs, torch.full_like(seqs, tok.pad_token_id))
advantages = torch.randn(ROWS, R, generator=g) * action
returns = torch.randn(ROWS, R, generator=g) * action
ptx_ids = torch.randint(5, vocab, (ROWS, T_PTX), generator=g)
ptx_len = torch.randint(4, T_PTX + 1, (ROWS,), generator=g)
ptx_start = torch.randint(1, 4, (ROWS,), generator=g)
ptx_attn = (torch.arange(T_PTX) < ptx_len[:, None]).long()
ptx_labels = torch.where(ptx_attn.bool() & (torch.arange(T_PTX) >= ptx_start[:, None]), ptx_ids, -100)
ptx = SFTBatch(input_ids=ptx_ids, attention_mask=ptx_attn, labels=ptx_labels)

with torch.no_grad():
    actor.eval()
    old_lp = actor(seqs[mine], attn[mine], num_scored=R)["logprobs"]
    actor.train()
if mode == "ppo":
    with torch.no_grad():
        critic.eval()
        old_values = critic(seqs[mine], attn[mine], num_values=R)["values"]
        critic.train()
    exp = Experience(sequences=seqs[mine], attention_mask=attn[mine], action_mask=action[mine], old_logprobs=old_lp,
                     advantages=advantages[mine], ref_logprobs=old_lp, old_values=old_values, returns=returns[mine])
    settings = UpdateSettings(ppo_epochs=1, minibatch_per_rank=per_rank, micro=micro, clip_range=0.2, dual_clip=None,
                              value_clip=None, entropy_coef=0.01, temperature=1.0, ptx_coef=ptx_coef)
else:
    # Scores at each row's last response token; the reference differs from the policy by a fixed amount.
    scores = torch.randn(ROWS, generator=g)
    last = action.cumsum(1).argmax(1)
    rewards = torch.zeros(ROWS, R)
    rewards[torch.arange(ROWS), last] = scores
    adv, _ = ADVANTAGE_ESTIMATORS["grpo"].fn(rewards[mine], action[mine], group_size=4)
    ref_shift = 0.3 * torch.randn(ROWS, R, generator=g)
    exp = Experience(sequences=seqs[mine], attention_mask=attn[mine], action_mask=action[mine], old_logprobs=old_lp,
                     advantages=adv, ref_logprobs=old_lp + ref_shift[mine])
    settings = UpdateSettings(ppo_epochs=2, minibatch_per_rank=per_rank, micro=micro, clip_range=0.2, dual_clip=None,
                              value_clip=None, entropy_coef=0.0, temperature=1.0, ptx_coef=ptx_coef,
                              clip_range_high=0.28, loss_aggregation="seq_mean_token_mean", kl_loss_coef=0.1)


def ptx_batches():
    while True:
        yield from ptx.index(mine).split(micro)


stats = rl_update(exp, actor, critic, settings, ptx_batches)
stats["actor_grad_norm"] = actor.global_grad_norm
weights = actor.full_state_dict()
if info.is_main:
    torch.save({k[len("lm."):]: v for k, v in weights.items()}, f"{out_prefix}.pt")   # the HF model's names
    with open(f"{out_prefix}.json", "w") as f:
        json.dump(stats, f)
shutdown_distributed()   # every rank exits cleanly (a gloo peer that leaves first can abort the other)
