"""LoRA and QLoRA models for each role: loading, adapters, what trains, the disabled-adapter view.

    lora = LoRASettings.from_config(cfg.lora)
    lm = load_lm(path, "actor", lora, dtype, tokenizer)        # adapters if "actor" in lora.apply_to
    with adapters_disabled(lm): ...                             # the base model, exactly

Adapters are injected with peft (`get_peft_model`) and the Hugging Face model that now holds
them is what the wrappers (`PolicyModel`, `ScalarHeadModel`) hold: the parameter names are
the model's own with `.base_layer.` / `.lora_A.default.` inserted, `generate` and the
config are the model's, and `model.peft_config` (set by peft) describes the adapters for
export. With `lora.quantization` set the base is loaded in 4 bits (bitsandbytes) on the
device it will run on, and only the adapters (and a scalar model's head) train.

Why the adapters may stand in for other models:
- reference: with the base frozen, the actor with its adapters disabled IS the SFT policy,
  so PPO needs no second copy of the base (`reference_from_actor`). Not sound when the
  base trains too (`only_optimize_lora=false`): then a separate reference is built.
- reward: a critic initialised from the reward model whose backbone stays frozen computes,
  with its adapters disabled, exactly the reward model's hidden states; with a frozen copy
  of the reward's head (read from the reward model's files) it IS the reward model
  (`share_critic_reward_backbone`). Sound only when the critic starts from the reward model,
  has adapters and a frozen base (checked by `check_lora_config`).
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from ..lora_settings import LoRAConfigError, LoRASettings, check_lora_config
from .loading import (_align_special_tokens, _attn_kwargs, check_model_path, check_pad_token,
                      enable_gradient_checkpointing, mark_new_score_head, quiet_transformers)
from .quantization import bnb_config, compute_dtype_of, disable_cpu_repack, is_4bit_param
from .scalar_head import ScalarHeadModel

HEAD_PREFIXES = ("score.",)
# Set on every loaded model: the embedding rows of the checkpoint, before a grown tokenizer resized them,
# so an adapter export knows whether it must carry the embeddings (engine/lora_export.py).
BASE_VOCAB_ATTR = "rlhf_ds_base_vocab_size"


# ---------------------------------------------------------------------------- adapters

def _is_lora_layer(module: nn.Module) -> bool:
    # Duck-typed, so runs without adapters never import peft.
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")


def lora_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of each peft LoRA layer of `model`."""
    return [(n, m) for n, m in model.named_modules() if _is_lora_layer(m)]


def has_lora(model: nn.Module) -> bool:
    return any(_is_lora_layer(m) for m in model.modules())


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run `model` as its base inside the block. Only peft's flag is flipped: `requires_grad` is left
    alone (peft's own `enable_adapters` toggles it, which a DeepSpeed engine must not see)."""
    layers = [m for _, m in lora_layers(model)]
    if not layers:
        raise ValueError("adapters_disabled: the model has no LoRA adapters (is lora.r > 0 for this role?)")
    saved = [m._disable_adapters for m in layers]
    for m in layers:
        if getattr(m, "merged", False):
            raise RuntimeError("adapters_disabled: an adapter is merged into its base weight; unmerge it first")
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, s in zip(layers, saved):
            m._disable_adapters = s


def _conv1d_class():
    # transformers' Conv1D (GPT-2, GPT-J's ancestors, ...): a linear layer whose weight is stored (in, out).
    from transformers.pytorch_utils import Conv1D
    return Conv1D


def is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, _conv1d_class())


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _linear_names(model: nn.Module) -> List[str]:
    """Leaf names of the linear layers adapters may go on: every nn.Linear (4-bit ones included, they
    subclass it) and transformers' Conv1D (peft adapts it with fan_in_fan_out), except the LM head and a
    scalar head."""
    out = set()
    skip = {id(model.get_output_embeddings())} if hasattr(model, "get_output_embeddings") and \
        model.get_output_embeddings() is not None else set()
    for name, m in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if _adaptable(m) and id(m) not in skip and leaf not in ("lm_head", "score"):
            out.add(leaf)
    return sorted(out)


def resolve_target_modules(model: nn.Module, spec: Union[str, Tuple[str, ...]]) -> List[str]:
    """`lora.target_modules` -> leaf module names present in `model`."""
    available = _linear_names(model)
    if spec == "all-linear":
        if not available:
            raise LoRAConfigError(f"lora.target_modules=all-linear: {type(model).__name__} has no linear "
                                  f"(nn.Linear or Conv1D) layers besides its heads; adapters need one")
        return available
    missing = [t for t in spec if t not in available]
    if missing:
        raise LoRAConfigError(f"lora.target_modules: {', '.join(missing)} not found in {type(model).__name__}; "
                              f"its linear layers are: {', '.join(available)} (or use all-linear)")
    return list(spec)


def _fan_in_fan_out(model: nn.Module, targets: List[str]) -> bool:
    """peft's flag for weights stored (in, out): true when every targeted layer is a Conv1D (GPT-2). peft
    checks each layer's own type anyway and flips the flag, with a warning, for a layer of the other kind."""
    kinds = {is_conv1d(m) for name, m in model.named_modules()
             if name.rsplit(".", 1)[-1] in targets and _adaptable(m)}
    return kinds == {True}


def apply_lora(model: nn.Module, lora: LoRASettings, scalar: bool = False) -> nn.Module:
    """Inject adapters and set what trains: the adapters, a scalar model's head, and with
    `only_optimize_lora=false` every full-precision base parameter too (4-bit weights never)."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_target_modules(model, lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        bias="none", fan_in_fan_out=_fan_in_fan_out(model, targets))
    model = get_peft_model(model, config).base_model.model    # the HF model, adapters injected in place
    for name, p in model.named_parameters():
        train = "lora_" in name or (scalar and name.startswith(HEAD_PREFIXES)) or \
            (not lora.only_optimize_lora and p.is_floating_point() and not is_4bit_param(p))
        p.requires_grad_(train)
    return model


# ---------------------------------------------------------------------------- loading

def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _from_pretrained(auto_cls, path: str, role: str, lora: LoRASettings, dtype: torch.dtype, quantize: bool,
                     device: Optional[torch.device], attn_implementation: str, trust_remote_code: bool, **extra):
    quiet_transformers()
    check_model_path(path)
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, **_attn_kwargs(attn_implementation), **extra)
    if quantize:
        from transformers.integrations import is_deepspeed_zero3_enabled
        if is_deepspeed_zero3_enabled():          # built inside the engine's ZeRO-3 construction context
            check_lora_config(LoRASettings(r=max(1, lora.r), quantization=lora.quantization), zero_stage=3)
        compute = compute_dtype_of(lora.compute_dtype, dtype)
        device = device or _default_device()
        # Quantised where it will run: a 4-bit model is never moved afterwards (see quantization.py).
        kwargs.update(dtype=compute, quantization_config=bnb_config(lora.quantization, lora.double_quant, compute),
                      device_map={"": device.index if device.type == "cuda" else device.type})
    model, info = auto_cls.from_pretrained(path, output_loading_info=True, **kwargs)
    mark_new_score_head(model, info)
    if quantize:
        disable_cpu_repack(model)
        if device.type == "cpu":
            own_cpu_tensors(model)
    return model


def own_cpu_tensors(model: nn.Module) -> None:
    """Copy the full-precision parameters and buffers of a 4-bit model on CPU out of the checkpoint.
    transformers loads them as views of the memory-mapped safetensors file, which then stays mapped
    with every page quantisation touched (measured: ~the whole fp32 checkpoint per 4-bit model in
    RSS). On a GPU they are copied to the device and nothing stays mapped."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and not is_4bit_param(p) and p.device.type == "cpu":
                    p.data = p.data.clone()
            for name, b in list(module._buffers.items()):
                if b is not None and b.device.type == "cpu":
                    module._buffers[name] = b.clone()


def _finish(model, role: str, lora: LoRASettings, tokenizer, gradient_checkpointing: bool, scalar: bool,
            dtype: torch.dtype):
    weight = model.get_input_embeddings().weight
    setattr(model, BASE_VOCAB_ATTR, getattr(weight, "ds_shape", weight.shape)[0])    # full shape under ZeRO-3
    _align_special_tokens(model, tokenizer)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora.applies_to(role):
        model = apply_lora(model, lora, scalar=scalar)
        # peft keeps adapters in fp32 on a bf16 base; DeepSpeed casts them to the training dtype at
        # ZeRO-0/1/2 but not at ZeRO-3 (params added after zero.Init are converted as they are), so
        # cast here: the same dtype at every stage, with the optimizer's fp32 master copy behind it.
        for name, p in model.named_parameters():
            if "lora_" in name and p.dtype != dtype:
                p.data = p.data.to(dtype)
    else:
        for p in model.parameters():
            if is_4bit_param(p):
                p.requires_grad_(False)
    return model


def load_lm(path: str, role: str, lora: LoRASettings, dtype: torch.dtype = torch.float32, tokenizer=None,
            attn_implementation: str = "auto", trust_remote_code: bool = False,
            gradient_checkpointing: bool = False, device: Optional[torch.device] = None,
            quantize: Optional[bool] = None):
    """A causal LM for `role` (sft, actor, reference): adapters when `lora` applies to it, a 4-bit base
    when `quantize` (default: `lora.quantizes(role)`)."""
    from transformers import AutoModelForCausalLM

    quantize = lora.quantizes(role) if quantize is None else quantize
    model = _from_pretrained(AutoModelForCausalLM, path, role, lora, dtype, quantize, device, attn_implementation,
                             trust_remote_code)
    return _finish(model, role, lora, tokenizer, gradient_checkpointing, scalar=False, dtype=dtype)


def load_scalar(path: str, role: str, lora: LoRASettings, dtype: torch.dtype = torch.float32, tokenizer=None,
                attn_implementation: str = "auto", trust_remote_code: bool = False,
                gradient_checkpointing: bool = False, device: Optional[torch.device] = None,
                quantize: Optional[bool] = None):
    """`AutoModelForSequenceClassification` (one label) for `role` (reward, critic, reward_frozen)."""
    from transformers import AutoModelForSequenceClassification

    quantize = lora.quantizes(role) if quantize is None else quantize
    model = _from_pretrained(AutoModelForSequenceClassification, path, role, lora, dtype, quantize, device,
                             attn_implementation, trust_remote_code, num_labels=1)
    model = _finish(model, role, lora, tokenizer, gradient_checkpointing, scalar=True, dtype=dtype)
    check_pad_token(model, path)
    return model


# ---------------------------------------------------------------------------- critic + reward on one backbone

def read_head(path: str, name: str = "score") -> nn.Linear:
    """The `score` head of a saved sequence-classification model, as a frozen nn.Linear read
    straight from its safetensors (so it exists whole on every rank, whatever ZeRO does)."""
    from safetensors import safe_open

    if not os.path.isdir(path):
        raise LoRAConfigError(f"lora.share_critic_reward_backbone needs the reward model as a local directory, "
                              f"got {path!r}")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        file = weight_map.get(f"{name}.weight")
    else:
        file = "model.safetensors"
    if file is None or not os.path.isfile(os.path.join(path, file)):
        raise LoRAConfigError(f"{path}: no {name}.weight in its safetensors files (is it a reward model?)")
    with safe_open(os.path.join(path, file), framework="pt") as f:
        keys = set(f.keys())
        if f"{name}.weight" not in keys:
            raise LoRAConfigError(f"{path}: no {name}.weight in its safetensors files (is it a reward model?)")
        weight = f.get_tensor(f"{name}.weight")
        bias = f.get_tensor(f"{name}.bias") if f"{name}.bias" in keys else None
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    head.requires_grad_(False)
    return head


class CriticWithRewardHead(ScalarHeadModel):
    """The critic (adapters + value head, trained) and the reward model (the same frozen backbone with
    adapters disabled + the reward's own frozen head) in one module, so one backbone serves both.

    `forward(..., as_reward=True)` returns the reward model's `scores` (and its per-token values)."""

    def __init__(self, model: nn.Module, reward_head: nn.Linear):
        super().__init__(model)
        self.reward_head = reward_head
        if not has_lora(model):
            raise ValueError("CriticWithRewardHead needs a critic with LoRA adapters")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_values: Optional[int] = None,
                as_reward: bool = False):
        if not as_reward:
            return super().forward(input_ids, attention_mask, num_values=num_values)
        with adapters_disabled(self.model):
            hidden = self._hidden(input_ids, attention_mask)
        values = self.reward_head(hidden.to(self.reward_head.weight.dtype)).squeeze(-1).float()
        return self._outputs(values, attention_mask, num_values)
