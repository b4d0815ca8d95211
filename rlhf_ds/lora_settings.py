"""The `lora` config section in the form the code uses, and the combinations that cannot work.

Torch-free, so that the memory estimate (which runs before any model is built) applies the same
role rules as the loaders: who gets adapters, whose base is 4-bit, when the reference and the
reward model cost nothing because adapters stand in for them (see models/lora.py for why).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, FrozenSet, List, Optional, Tuple, Union

ROLES = ("sft", "reward", "actor", "critic")   # what lora.apply_to may name, in pipeline order


class LoRAConfigError(ValueError):
    """A LoRA/QLoRA setting that cannot work, phrased for the user."""


@dataclass(frozen=True)
class LoRASettings:
    """The run config's `lora` section in the form the code uses (see config.LoRAConfig for help)."""
    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Union[str, Tuple[str, ...]] = "all-linear"
    learning_rate: Optional[float] = None
    only_optimize_lora: bool = True
    apply_to: FrozenSet[str] = frozenset({"actor", "critic"})
    quantization: str = "none"
    double_quant: bool = True
    compute_dtype: str = "auto"
    reference_from_actor: bool = True
    share_critic_reward_backbone: bool = False

    @classmethod
    def from_config(cls, c) -> "LoRASettings":
        targets = c.target_modules.strip()
        target_modules = "all-linear" if targets in ("all-linear", "") else \
            tuple(t.strip() for t in targets.split(",") if t.strip())
        return cls(r=c.r, alpha=c.alpha, dropout=c.dropout, target_modules=target_modules,
                   learning_rate=c.learning_rate, only_optimize_lora=c.only_optimize_lora,
                   apply_to=frozenset(p.strip() for p in c.apply_to.split(",") if p.strip()),
                   quantization=c.quantization, double_quant=c.double_quant, compute_dtype=c.compute_dtype,
                   reference_from_actor=c.reference_from_actor,
                   share_critic_reward_backbone=c.share_critic_reward_backbone)

    @property
    def enabled(self) -> bool:
        return self.r > 0 and bool(self.apply_to)

    @property
    def quantized(self) -> bool:
        return self.r > 0 and self.quantization != "none"

    def applies_to(self, role: str) -> bool:
        """Does `role` (sft, reward, actor, critic) get adapters?"""
        return self.r > 0 and role in self.apply_to

    def quantizes(self, role: str) -> bool:
        """Is the base of `role` loaded in 4 bits? Roles with adapters in a QLoRA run, and in PPO the
        frozen models of a QLoRA run: "reference" follows the actor (a KL against a differently
        rounded copy of the same weights would be noise), "reward_frozen" follows the run."""
        if not self.quantized:
            return False
        if role == "reference":
            return self.applies_to("actor")
        if role == "reward_frozen":
            return self.applies_to("actor") or self.applies_to("critic")
        return self.applies_to(role)

    @property
    def reference_is_actor(self) -> bool:
        """PPO's reference log-probs come from the actor with adapters disabled."""
        return self.reference_from_actor and self.applies_to("actor") and self.only_optimize_lora

    @property
    def reward_is_critic(self) -> bool:
        return self.share_critic_reward_backbone and self.applies_to("critic") and self.only_optimize_lora

    def lr_overrides(self) -> Optional[Callable[[str], Optional[float]]]:
        """For `build_train_engine(lr_overrides=...)`: adapters at `lora.learning_rate` when set."""
        if self.r == 0 or self.learning_rate is None:
            return None
        lr = float(self.learning_rate)
        return lambda name: lr if "lora_" in name else None


def check_lora_config(lora: LoRASettings, zero_stage: int, critic_init: str = "reward") -> List[str]:
    """Raise LoRAConfigError for combinations that cannot work; return warnings for ones that are
    changed (a requested shortcut that would be unsound)."""
    warnings = []
    if lora.quantized and zero_stage == 3:
        raise LoRAConfigError(
            f"lora.quantization={lora.quantization} (QLoRA) needs ZeRO stage 0, 1 or 2, but the DeepSpeed config "
            f"uses ZeRO-3. A 4-bit base cannot be usefully partitioned: each rank would load the whole quantised "
            f"model, its quantisation constants stay replicated, and generation would need a dequantised full "
            f"copy. Use --deepspeed configs/qlora_single_gpu.json (one GPU) or configs/zero2.json (several), or "
            f"set lora.quantization=none to train LoRA adapters at ZeRO-3.")
    if lora.r > 0 and not lora.apply_to:
        raise LoRAConfigError(f"lora.r > 0 but lora.apply_to names no model; allowed: {', '.join(ROLES)}")
    if lora.share_critic_reward_backbone:
        reasons = []
        if not lora.applies_to("critic"):
            reasons.append("the critic has no adapters (add critic to lora.apply_to and set lora.r > 0)")
        if not lora.only_optimize_lora:
            reasons.append("lora.only_optimize_lora=false trains the critic's backbone")
        if critic_init != "reward":
            reasons.append("model.critic_init must be reward (the critic must start from the reward model)")
        if reasons:
            raise LoRAConfigError("lora.share_critic_reward_backbone needs the critic's frozen backbone to be the "
                                  "reward model's, but " + "; ".join(reasons))
    if lora.reference_from_actor and lora.applies_to("actor") and not lora.only_optimize_lora:
        warnings.append("lora.reference_from_actor ignored: with lora.only_optimize_lora=false the actor's base "
                        "trains, so disabling its adapters no longer gives the reference; a separate reference "
                        "model is built")
    return warnings
