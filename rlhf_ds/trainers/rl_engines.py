"""The engines of the RL loop: which models it holds, and how they are prepared for on-policy updates.

A critic is built only for an advantage estimator that needs one (gae), a reference only when a
KL term is used (ppo.kl_mode reward or loss), a reward model only when a reward source is one.

Dropout is switched off in every model RL trains. Old log-probs and values are recorded in eval mode
(no dropout); if the update then ran with dropout, its first ratio pi/pi_old would be noise around 1,
not 1, and the clip would fire on data the policy generated itself (issue 14: ratio_max 1.28 with
LoRA dropout 0.05). OpenRLHF, TRL and verl disable dropout in the actor and critic for this reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from ..config import ConfigError
from ..engine import Engine, HybridEngine, build_inference_engine, build_train_engine, zero_stage
from ..models.policy import PolicyModel
from ..models.scalar_head import ScalarHeadModel
from .lora_setup import ReferenceFromActor, RewardFromCritic, causal_lm, check_ppo_lora, critic_model, scalar_lm


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability inside `model` to 0, in place: the `nn.Dropout` modules (a model's
    own and peft's `lora_dropout`) and the float rates that attention layers read at forward time
    (Hugging Face's `self.attention_dropout`, used as `dropout=0.0 if not self.training else ...`).
    The model's config is left as it is, so an export keeps the rates it was given."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool):
                setattr(module, name, 0.0)
    return model


def no_dropout(factory):
    """`factory` (a model constructor for an engine) with dropout disabled in what it builds."""
    def build() -> torch.nn.Module:
        return disable_dropout(factory())
    return build


@dataclass
class RLEngines:
    """The models of one RL run. Only the actor always exists: the critic only for an estimator that
    needs one, the reference only when a KL term is used, the reward model only when a reward
    source is the reward model. With LoRA the reference and the reward may be views of the trained
    engines (lora_setup.py)."""
    actor: Engine
    critic: Optional[Engine]
    reference: Optional[object]
    reward: Optional[object]
    hybrid: Optional[HybridEngine]

    @property
    def trained(self) -> Dict[str, Engine]:
        """The engines a checkpoint holds, by name."""
        return {name: e for name, e in (("actor", self.actor), ("critic", self.critic)) if e is not None}

    def destroy(self) -> None:
        for e in (self.actor, self.critic, self.reference, self.reward):
            if e is not None:
                e.destroy()


def build_rl_engines(ctx, sft_path: str, reward_path: Optional[str], micro: int, grad_accum: int, total_steps: int,
                     warmup_steps: int, needs_critic: bool, needs_reference: bool, needs_reward_model: bool,
                     ops) -> RLEngines:
    """Actor (and critic) as training engines, reference and reward as inference engines (or views of
    the trained ones with LoRA), the hybrid engine for generation."""
    cfg, p, mc = ctx.cfg, ctx.cfg.ppo, ctx.cfg.model
    lora = check_ppo_lora(ctx, zero_stage(ctx.ds_config))
    if lora.reward_is_critic and (not needs_critic or not needs_reward_model):
        why = "trains no critic" if not needs_critic else "uses no reward model"
        raise ConfigError(f"lora.share_critic_reward_backbone: ppo.advantage_estimator={p.advantage_estimator} "
                          f"{why}; set lora.share_critic_reward_backbone=false")

    def train_engine(name, factory, lr):
        return build_train_engine(name, no_dropout(factory), ctx.ds_config, micro_batch_size=micro,
                                  grad_accum=grad_accum, precision=ctx.precision,
                                  gradient_clipping=cfg.deepspeed.gradient_clipping, lr=lr,
                                  weight_decay=p.weight_decay, total_steps=total_steps, warmup_steps=warmup_steps,
                                  schedule="constant", source=str(cfg.deepspeed.config), seed=cfg.seed,
                                  lr_overrides=lora.lr_overrides())

    inference = dict(micro_batch_size=micro, precision=ctx.precision, offload_params=cfg.deepspeed.offload_inference)
    actor = train_engine("actor", lambda: PolicyModel(causal_lm(ctx, sft_path, "actor", mc.gradient_checkpointing),
                                                      ops, fused_head=mc.fused_lm_head), p.policy_lr)
    critic = None
    if needs_critic:
        critic_path = reward_path if mc.critic_init == "reward" else sft_path
        critic = train_engine("critic", lambda: critic_model(ctx, critic_path, reward_path, mc.gradient_checkpointing),
                              p.value_lr)
    reference = None
    if needs_reference:
        reference = ReferenceFromActor(actor) if lora.reference_is_actor else build_inference_engine(
            "reference", lambda: PolicyModel(causal_lm(ctx, sft_path, "reference"), ops, fused_head=mc.fused_lm_head),
            ctx.ds_config, **inference)
    reward = None
    if needs_reward_model:
        reward = RewardFromCritic(critic) if lora.reward_is_critic else build_inference_engine(
            "reward", lambda: ScalarHeadModel(scalar_lm(ctx, reward_path, "reward_frozen")), ctx.ds_config,
            seed=cfg.seed, **inference)
    hybrid = HybridEngine(actor, cfg.hybrid.gather_bucket_mb, cfg.hybrid.keep_gathered) if cfg.hybrid.enabled else None
    return RLEngines(actor=actor, critic=critic, reference=reference, reward=reward, hybrid=hybrid)
