"""LoRA / QLoRA wiring of the trainers: model factories per role, and the two models PPO gets for free.

Without adapters (lora.r = 0) every factory here returns exactly what the trainers built before
(`load_causal_lm`, `load_scalar_model`), so a full fine-tuning run is unchanged.

PPO with LoRA holds, per rank:
    actor      base (4-bit with QLoRA) + adapters, trained
    critic     reward model's base (4-bit with QLoRA) + adapters + value head, trained
    reference  nothing: the actor with adapters disabled (`ReferenceFromActor`), when its base is frozen
    reward     its own frozen model (4-bit with QLoRA), or nothing with
               lora.share_critic_reward_backbone: the critic's backbone with adapters disabled and the
               reward's own head (`RewardFromCritic`)
"""
from __future__ import annotations

from typing import Optional

import torch

from ..lora_settings import LoRASettings, check_lora_config
from ..models.loading import load_causal_lm, load_scalar_model
from ..models.lora import CriticWithRewardHead, load_lm, load_scalar, read_head
from ..models.scalar_head import ScalarHeadModel


def lora_settings(cfg) -> LoRASettings:
    return LoRASettings.from_config(cfg.lora)


def _uses_lora_loader(lora: LoRASettings, role: str, quantize: Optional[bool]) -> bool:
    return lora.applies_to(role) or bool(quantize if quantize is not None else lora.quantizes(role))


def causal_lm(ctx, path: str, role: str, gradient_checkpointing: bool = False, quantize: Optional[bool] = None):
    """The Hugging Face causal LM for `role` (sft, actor, reference)."""
    lora, mc = lora_settings(ctx.cfg), ctx.cfg.model
    if not _uses_lora_loader(lora, role, quantize):
        return load_causal_lm(path, ctx.dtype, ctx.tokenizer, mc.attn_implementation, mc.trust_remote_code,
                              gradient_checkpointing)
    return load_lm(path, role, lora, ctx.dtype, ctx.tokenizer, mc.attn_implementation, mc.trust_remote_code,
                   gradient_checkpointing, device=ctx.dist.device, quantize=quantize)


def scalar_lm(ctx, path: str, role: str, gradient_checkpointing: bool = False, quantize: Optional[bool] = None):
    """The sequence-classification model for `role` (reward, critic, reward_frozen)."""
    lora, mc = lora_settings(ctx.cfg), ctx.cfg.model
    if not _uses_lora_loader(lora, role, quantize):
        return load_scalar_model(path, ctx.dtype, ctx.tokenizer, mc.attn_implementation, mc.trust_remote_code,
                                 gradient_checkpointing)
    return load_scalar(path, role, lora, ctx.dtype, ctx.tokenizer, mc.attn_implementation, mc.trust_remote_code,
                       gradient_checkpointing, device=ctx.dist.device, quantize=quantize)


def critic_model(ctx, critic_path: str, reward_path: str, gradient_checkpointing: bool = False):
    """The critic module; with lora.share_critic_reward_backbone it also carries the reward's frozen head."""
    lora = lora_settings(ctx.cfg)
    model = scalar_lm(ctx, critic_path, "critic", gradient_checkpointing)
    if lora.reward_is_critic:
        return CriticWithRewardHead(model, read_head(reward_path).to(ctx.dist.device))
    return ScalarHeadModel(model)


def check_ppo_lora(ctx, zero_stage: int) -> LoRASettings:
    """Validate the LoRA section for PPO (raises with the reason) and log what the adapters replace."""
    lora = lora_settings(ctx.cfg)
    for w in check_lora_config(lora, zero_stage, ctx.cfg.model.critic_init):
        ctx.log.warning(w)
    if lora.enabled:
        ctx.log.info(f"ppo: LoRA r={lora.r} on {', '.join(sorted(lora.apply_to))}"
                     + (f", {lora.quantization} 4-bit base" if lora.quantized else "")
                     + ("; reference = actor with adapters disabled" if lora.reference_is_actor else "")
                     + ("; reward = critic backbone with adapters disabled" if lora.reward_is_critic else ""))
    return lora


class ReferenceFromActor:
    """Stands in for the reference engine: the actor's forward with its adapters disabled. Goes through
    the actor's engine, so under ZeRO-3 the hooks gather the base weights as usual."""

    name = "reference"

    def __init__(self, actor):
        self.actor = actor

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_scored: Optional[int] = None,
                 temperature: float = 1.0, **kwargs):
        return self.actor(input_ids, attention_mask, num_scored=num_scored, temperature=temperature,
                          disable_adapters=True, **kwargs)

    @property
    def device(self):
        return self.actor.device

    def eval(self) -> None:
        pass

    def train(self) -> None:
        pass

    def destroy(self) -> None:
        self.actor = None


class RewardFromCritic:
    """Stands in for the reward engine: the critic's backbone with adapters disabled and the reward's head."""

    name = "reward"

    def __init__(self, critic):
        self.critic = critic

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        return self.critic(input_ids, attention_mask, as_reward=True, **kwargs)

    @property
    def device(self):
        return self.critic.device

    def eval(self) -> None:
        pass

    def train(self) -> None:
        pass

    def destroy(self) -> None:
        self.critic = None
