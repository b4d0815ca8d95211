"""What a model does to its LM head's output before the softmax, for the fused log-prob path.

`model.fused_lm_head` computes log-probs from `hidden @ W.T` in chunks, so whatever the model's
own forward does to its logits after the head must be reproduced there, or the policy scored is
not the policy sampled (the two paths differed by up to 34 nats on a tiny Gemma-2 with soft-cap 5).

- A constant multiplier s (logits = (hidden @ W.T) * s) is exact to fold into the temperature:
  softmax(s * z / T) = softmax(z / (T / s)). Cohere's `logit_scale` multiplies; Granite's and
  MiniCPM3's `logits_scaling` divides, HyperCLOVA X's multiplies: the same name means opposite
  things, so the direction is looked up per model_type (read from transformers' modeling code).
- Soft-capping (Gemma 2/3, `final_logit_softcapping`: c * tanh(z / c)) is elementwise but not
  linear: the chunked kernel would have to apply it and its derivative inside each chunk. It is
  refused instead, as is a scaling attribute on a model type this table does not know.
"""
from __future__ import annotations

from typing import Callable, Dict

from ..config_schema import ConfigError

# model_type -> the multiplier s its CausalLM forward applies to the LM head's output.
_MULTIPLIERS: Dict[str, Callable[[object], float]] = {
    **{t: (lambda c: 1.0 if c.logit_scale is None else c.logit_scale)
       for t in ("cohere", "cohere2", "cohere2_moe", "cohere_compass_text")},
    **{t: (lambda c: 1.0 / c.logits_scaling) for t in (
        "granite", "granitemoe", "granitemoeshared", "granitemoehybrid", "granite_swa", "granitemoe_swa",
        "minicpm3")},
    "hyperclovax": lambda c: c.logits_scaling,
}
# Config attributes that post-process the logits in some model family; a value other than these
# neutral ones on a model type missing from _MULTIPLIERS is refused.
_SCALE_ATTRS = {"logit_scale": (None, 1.0), "logits_scaling": (None, 1.0)}
_SOFTCAP_ATTRS = ("final_logit_softcapping", "logits_soft_cap")


def fused_head_multiplier(config) -> float:
    """The constant s with model logits = (hidden @ W.T) * s (1.0 for most models).

    Raises ConfigError (one line, naming the config attribute) when the model's logits are
    soft-capped or scaled in a way the fused path cannot reproduce."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", "")
    for attr in _SOFTCAP_ATTRS:
        cap = getattr(text, attr, None)
        if cap is not None:
            raise ConfigError(f"model.fused_lm_head: {model_type} soft-caps its logits (config {attr}={cap}), "
                              f"which the fused LM head does not apply; set model.fused_lm_head=false")
    if model_type in _MULTIPLIERS:
        s = float(_MULTIPLIERS[model_type](text))
        if not s > 0:
            raise ConfigError(f"model.fused_lm_head: {model_type} scales its logits by {s} (config "
                              f"{', '.join(a for a in _SCALE_ATTRS if hasattr(text, a))}); only a positive "
                              f"scale can be folded into the temperature; set model.fused_lm_head=false")
        return s
    for attr, neutral in _SCALE_ATTRS.items():
        value = getattr(text, attr, None)
        if value not in neutral:
            raise ConfigError(f"model.fused_lm_head: config {attr}={value} of model type {model_type!r} may "
                              f"post-process the logits in a way the fused LM head does not know; "
                              f"set model.fused_lm_head=false")
    return 1.0
