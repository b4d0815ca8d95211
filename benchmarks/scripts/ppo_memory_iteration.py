"""One PPO iteration in this process, for the memory benchmark (benchmarks/test_memory_lora.py).

Usage: python ppo_memory_iteration.py MODE MODEL_DIR REWARD_DIR OUT_JSON
    MODE: baseline | full | lora | qlora | qlora_shared

`baseline` imports the stack (torch, transformers, peft, bitsandbytes, deepspeed, rlhf_ds), starts the
process group and stops: what every mode pays before holding any model. The other modes build the
PPO engines the way rlhf_ds.trainers.rl_engines does (same factories, ZeRO-0 from configs/qlora_single_gpu.json,
fp32 on CPU, bf16 on GPUs that have it; the critic starts from the reward model) and run one iteration: generate (hybrid engine), score (actor, reference, critic, reward),
KL-shaped rewards, GAE, whitening, one PPO update of actor and critic.

    full          full fine-tuning: actor and critic trained, reference and reward frozen copies
    lora          LoRA r=16 on every linear layer of actor and critic; reference = actor with adapters
                  disabled; reward a frozen full-precision copy
    qlora         as lora with every base in 4-bit NF4 (double quantisation); the reward model 4-bit too
    qlora_shared  as qlora, and the reward is the critic's backbone with adapters disabled

Measured (CPU): the kernel's resident high-water mark of this process (VmHWM in /proc/self/status),
once after setup (loading included) and once for the iteration alone: after the engines are built,
freed heap is returned to the OS (malloc_trim) and the mark is reset (/proc/self/clear_refs, "5"), so
VmHWM after the iteration is the peak resident memory while it ran, models included.
Not ru_maxrss: on Linux a child's ru_maxrss starts from its parent's RSS at fork (the forked image's
high-water mark survives exec), so under pytest every child would report at least pytest's own RSS.
On CUDA: torch.cuda.max_memory_allocated over setup and over the iteration (reset after setup).
"""
import ctypes
import gc
import json
import logging
import os
import resource
import sys
import time

MODE, MODEL_DIR, REWARD_DIR, OUT = sys.argv[1:5]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLLOUT, MINIBATCH, MICRO, PROMPT, NEW_TOKENS = 8, 8, 4, 24, 24

import torch  # noqa: E402
import transformers  # noqa: E402,F401
import peft  # noqa: E402,F401
import bitsandbytes  # noqa: E402,F401
import deepspeed  # noqa: E402,F401

from rlhf_ds.config import load_config  # noqa: E402
from rlhf_ds.engine import (GenerationSettings, HybridEngine, build_inference_engine, build_train_engine,  # noqa: E402
                            init_distributed, load_ds_config)
from rlhf_ds.models.policy import PolicyModel  # noqa: E402
from rlhf_ds.models.scalar_head import ScalarHeadModel  # noqa: E402
from rlhf_ds.trainers.common import RunContext  # noqa: E402
from rlhf_ds.trainers.lora_setup import (ReferenceFromActor, RewardFromCritic, causal_lm, critic_model,  # noqa: E402
                                         lora_settings, scalar_lm)
from rlhf_ds.trainers.ops import token_ops  # noqa: E402
from rlhf_ds.trainers.rl_experience import Experience, global_whiten, score_rollout  # noqa: E402
from rlhf_ds.trainers.rl_sampling import generate_rollout  # noqa: E402
from rlhf_ds.trainers.rl_update import UpdateSettings, rl_update  # noqa: E402


def rss_now_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reset_hwm() -> bool:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


info = init_distributed("auto")
cuda = info.device.type == "cuda"
result = {"mode": MODE, "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
if MODE == "baseline":
    result.update(hwm_kb=hwm_kb(), rss_kb=rss_now_kb(),
                  ru_maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    json.dump(result, open(OUT, "w"))
    sys.exit(0)

lora_args = {
    "full": [],
    "lora": ["--lora.r=16", "--lora.alpha=32", "--lora.apply_to=actor,critic"],
    "qlora": ["--lora.r=16", "--lora.alpha=32", "--lora.apply_to=actor,critic", "--lora.quantization=nf4"],
    "qlora_shared": ["--lora.r=16", "--lora.alpha=32", "--lora.apply_to=actor,critic", "--lora.quantization=nf4",
                     "--lora.share_critic_reward_backbone=true"],
}[MODE]
cfg = load_config(None, [f"--model.sft_model_path={MODEL_DIR}", *lora_args])
ds_config = load_ds_config(os.path.join(REPO, "configs", "qlora_single_gpu.json"))
precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
log = logging.getLogger("bench")
ctx = RunContext(cfg=cfg, dist=info, ds_config=ds_config, precision=precision, log=log, metrics=None, tokenizer=None)
lora = lora_settings(cfg)
ops = token_ops("auto")
t0 = time.time()


def train_engine(name, factory, lr):
    return build_train_engine(name, factory, ds_config, micro_batch_size=MICRO, grad_accum=MINIBATCH // MICRO,
                              precision=precision, gradient_clipping=1.0, lr=lr, weight_decay=0.0, total_steps=10,
                              warmup_steps=0, schedule="constant", lr_overrides=lora.lr_overrides())


inference = dict(micro_batch_size=MICRO, precision=precision)
actor = train_engine("actor", lambda: PolicyModel(causal_lm(ctx, MODEL_DIR, "actor"), ops), 1e-5)
critic = train_engine("critic", lambda: critic_model(ctx, REWARD_DIR, REWARD_DIR), 1e-5)   # critic_init=reward
ref = ReferenceFromActor(actor) if lora.reference_is_actor else build_inference_engine(
    "reference", lambda: PolicyModel(causal_lm(ctx, MODEL_DIR, "reference"), ops), ds_config, **inference)
reward = RewardFromCritic(critic) if lora.reward_is_critic else build_inference_engine(
    "reward", lambda: ScalarHeadModel(scalar_lm(ctx, REWARD_DIR, "reward_frozen")), ds_config, **inference)
hybrid = HybridEngine(actor)
setup_s = time.time() - t0
result["setup_hwm_kb"] = hwm_kb()
result["hwm_reset"] = reset_hwm()
result["rss_after_setup_kb"] = rss_now_kb()
if cuda:
    result["setup_max_allocated"] = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()

# One iteration, steps 2-6 of rlhf_ds/trainers/rl_loop.py (PPO: the reward model scores directly).
t1 = time.time()
g = torch.Generator().manual_seed(0)
vocab = actor.module.config.vocab_size
ids = torch.randint(3, vocab, (ROLLOUT, PROMPT), generator=g).to(info.device)
mask = torch.ones_like(ids)
mask[::2, :PROMPT // 3] = 0                                   # left padding on every other prompt
ids = ids.masked_fill(mask == 0, 0)
settings = GenerationSettings(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=True)
rollout = generate_rollout(actor, hybrid, ids, mask, settings, eos_id=1, pad_id=0, chunk=ROLLOUT)
old_lp, ref_lp, values = score_rollout(rollout, actor, ref, critic, MICRO, 1.0)
with torch.no_grad():
    raw = torch.cat([reward(p.sequences, p.attention_mask)["scores"] for p in rollout.split(MICRO)])
am = rollout.action_mask
rewards, kl = ops.kl_shaped_rewards(raw.float(), old_lp, ref_lp, am, 0.05, "k1")
advantages, returns = ops.gae(rewards, values, am, 1.0, 0.95)
advantages = global_whiten(advantages, am)
exp = Experience(sequences=rollout.sequences, attention_mask=rollout.attention_mask, action_mask=am,
                 old_logprobs=old_lp, advantages=advantages, ref_logprobs=ref_lp, old_values=values, returns=returns)
stats = rl_update(exp, actor, critic, UpdateSettings(ppo_epochs=1, minibatch_per_rank=MINIBATCH, micro=MICRO,
                                                      clip_range=0.2, dual_clip=None, value_clip=0.2,
                                                      entropy_coef=0.0, temperature=1.0))
result.update(
    iteration_s=time.time() - t1, setup_s=setup_s,
    iteration_hwm_kb=hwm_kb() if result["hwm_reset"] else None,
    ru_maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    policy_loss=stats.get("policy_loss"), value_loss=stats.get("value_loss"),
    trainable_params={e.name: sum(p.numel() for p in e.module.parameters() if p.requires_grad)
                      for e in (actor, critic)},
    models={"reference": type(ref).__name__, "reward": type(reward).__name__},
)
if cuda:
    result["iteration_max_allocated"] = torch.cuda.max_memory_allocated()
json.dump(result, open(OUT, "w"), indent=2)
