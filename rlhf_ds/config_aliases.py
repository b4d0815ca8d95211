"""The flat keys of the original `RLHFConfig` this project grew from, read as the nested keys.

    {"model_name": "gpt2", "sft_lr": 1e-4}   ==   {"model": {"name_or_path": "gpt2"}, "sft": {"learning_rate": 1e-4}}

Accepted in config files, in dicts given to `load_config`, on the command line (`--sft_lr=1e-4`)
and as `RLHFConfig(...)` keyword arguments; each one used prints one notice line naming its new
key (on rank 0 only), so an old file keeps working while it shows how to write it today. Giving
an old key and its new key with different values is an error. `save_dir` and `save_interval` kept
their names and need no alias.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any, Dict, Optional, Tuple

FLAT_ALIASES: Dict[str, Tuple[str, str]] = {
    "model_name": ("model", "name_or_path"),
    "tokenizer_path": ("model", "tokenizer_path"),
    "sft_data_path": ("sft", "data_path"),
    "sft_epochs": ("sft", "epochs"),
    "sft_batch_size": ("sft", "batch_size"),
    "sft_lr": ("sft", "learning_rate"),
    "reward_data_path": ("reward", "data_path"),
    "reward_epochs": ("reward", "epochs"),
    "reward_lr": ("reward", "learning_rate"),
    "reward_batch_size": ("reward", "batch_size"),
    "freeze_reward_backbone": ("reward", "freeze_reward_backbone"),
    "ppo_data_path": ("ppo", "prompt_path"),
    "ppo_iterations": ("ppo", "iterations"),
    "ppo_lr_policy": ("ppo", "policy_lr"),
    "ppo_lr_value": ("ppo", "value_lr"),
    "ppo_batch_size": ("ppo", "rollout_batch_size"),
    "ppo_mini_batch_size": ("ppo", "minibatch_size"),
    "ppo_epochs": ("ppo", "ppo_epochs"),
    "max_length": ("data", "max_length"),
    "log_level": ("logging", "log_level"),
}


def new_key(flat: str) -> str:
    section, key = FLAT_ALIASES[flat]
    return f"{section}.{key}"


def _notice(where: str, flat: str) -> None:
    # Rank 0 only (the launchers set RANK): one line per key, not one per process.
    if os.environ.get("RANK", "0") == "0":
        print(f"rlhf_ds: {where}{flat!r} is a flat key of the original RLHFConfig; read as "
              f"{new_key(flat)!r} (write it so to silence this)", file=sys.stderr, flush=True)


def _conflict(where: str, flat: str, old: Any, new: Any):
    from .config_schema import ConfigError
    return ConfigError(f"{where}{flat!r} ({old!r}) and {new_key(flat)!r} ({new!r}) are the same key with two "
                       f"values; keep {new_key(flat)!r}")


def expand_flat_keys(layer: Dict[str, Any], origin: str = "", lines: Optional[Dict[str, int]] = None,
                     reserved: Tuple[str, ...] = ()) -> Tuple[Dict[str, Any], Optional[Dict[str, int]]]:
    """`layer` (one config layer: a file, a dict, the command line) with its flat keys moved to their
    sections, and `lines` (dotted key -> line) with them. Names in `reserved` (the schema's own
    top-level keys and sections) are never aliases."""
    if not any(k in FLAT_ALIASES and k not in reserved for k in layer):
        return layer, lines
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in layer.items()
           if k not in FLAT_ALIASES or k in reserved}
    lines = dict(lines or {})
    for flat, value in layer.items():
        if flat not in FLAT_ALIASES or flat in reserved:
            continue
        section, key = FLAT_ALIASES[flat]
        where = f"{origin}:{lines[flat]}: " if flat in lines else (f"{origin}: " if origin else "")
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            continue       # `section: 3` is reported by the schema check, with its own line
        if key in target and target[key] != value:
            raise _conflict(where, flat, value, target[key])
        target[key] = value
        if flat in lines:
            lines.setdefault(f"{section}.{key}", lines[flat])
        _notice(where, flat)
    return out, lines


def accept_flat_kwargs(cls):
    """Class decorator for RLHFConfig: `RLHFConfig(model_name=..., sft_lr=...)` sets the nested keys (on
    copies of the sections: a section object passed in is never changed)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in FLAT_ALIASES}
        init(self, *args, **kwargs)
        for name, value in flat.items():
            section, key = FLAT_ALIASES[name]
            current = getattr(self, section)
            default = getattr(type(current)(), key)
            if section in kwargs and getattr(current, key) not in (default, value):
                raise _conflict("RLHFConfig(...): ", name, value, getattr(current, key))
            setattr(self, section, dataclasses.replace(current, **{key: value}))
            _notice("RLHFConfig(...): ", name)

    cls.__init__ = __init__
    return cls
