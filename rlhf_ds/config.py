"""Typed run configuration: dataclass sections, JSON/YAML files, dotted CLI overrides.

The dataclasses in config_schema.py (re-exported here) are the single source of defaults and
help text. A run's configuration is built in layers, later layers winning:

    defaults  <-  demo preset (only when no model is given)  <-  --config FILE  <-  --section.key=value

Unknown keys and bad values are errors that name the file and line (for files), the
key, and what is allowed. The configuration actually used is written to
`save_dir/config.json` by the pipeline, and that file loads back unchanged.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

from .config_aliases import expand_flat_keys
from .config_schema import (DEMO_PRESET, SECTIONS, TOP_LEVEL, ConfigError, DataConfig, DeepSpeedSection,
                            GenerationConfig, HybridConfig, LoggingConfig, LoRAConfig, ModelConfig, PPOConfig,
                            RewardConfig, RLHFConfig, SFTConfig)
from .lora_settings import ROLES as LORA_ROLES

__all__ = [  # the schema is part of this module's interface
    "ConfigError", "DEMO_PRESET", "SECTIONS", "TOP_LEVEL", "RLHFConfig", "ModelConfig", "DataConfig", "SFTConfig",
    "RewardConfig", "PPOConfig", "GenerationConfig", "HybridConfig", "LoRAConfig", "DeepSpeedSection",
    "LoggingConfig", "build_config", "describe", "load_config", "parse_overrides", "validate",
    "RESUME_ALLOWED", "RESUME_SCOPE", "ResumeChange", "resume_allowed", "resume_changes",
]

# ---------------------------------------------------------------------------- values

def _allowed_keys(section_cls) -> List[str]:
    return [f.name for f in dataclasses.fields(section_cls)]


def _unknown_key_error(where: str, key: str, allowed: Iterable[str]) -> ConfigError:
    allowed = list(allowed)
    close = difflib.get_close_matches(key.split(".")[-1], allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list of mappings"
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])} or null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp, key: str, where: str) -> Any:
    """Convert a file value or a CLI string to the field's type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return _coerce(value, inner, key, where)
    if origin is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        return _coerce_items(value, typing.get_args(tp)[0], key, where)
    bad = ConfigError(f"{where}{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError:
                    raise bad from None
                if as_float.is_integer():
                    return int(as_float)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise ConfigError(f"{where}{key}: unsupported field type {tp}")


def _coerce_items(value: Any, item_cls, key: str, where: str) -> List[Any]:
    """A list of small sections (e.g. rewards.sources), each checked like a section: unknown keys and
    bad values name `key[i].field`. On the command line the list is written in YAML or JSON."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}{key}: cannot parse {value!r} as a YAML/JSON list: "
                              f"{getattr(e, 'problem', e)}") from None
    allowed = _allowed_keys(item_cls)
    if not isinstance(value, list):
        raise ConfigError(f"{where}{key}: expected a list of mappings with keys {', '.join(allowed)}; got {value!r}")
    hints = typing.get_type_hints(item_cls)
    items = []
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        if dataclasses.is_dataclass(item):
            item = dataclasses.asdict(item)
        if not isinstance(item, dict):
            raise ConfigError(f"{where}{item_key}: expected a mapping with keys {', '.join(allowed)}; got {item!r}")
        values = {}
        for k, v in item.items():
            if k not in hints:
                raise _unknown_key_error(where, f"{item_key}.{k}", allowed)
            values[k] = _coerce(v, hints[k], f"{item_key}.{k}", where)
        for f in dataclasses.fields(item_cls):
            if f.name in values:
                _check_bounds(values[f.name], f.metadata, f"{item_key}.{f.name}", where)
        try:
            items.append(item_cls(**values))
        except ConfigError as e:           # the item's own cross-key check
            raise ConfigError(f"{where}{item_key}: {e}") from None
    return items


def _check_bounds(value: Any, meta: Dict[str, Any], key: str, where: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}{key}: {value!r} is not allowed; allowed: {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{where}{key}: {value} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{where}{key}: {value} is above the maximum {hi}")


# ---------------------------------------------------------------------------- layers

def _load_file(path: str) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """Read a JSON or YAML config file; return (values, line number of each dotted key)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        # YAML is a superset of JSON, and its node tree keeps line numbers for every key.
        root = yaml.compose(text)
        data = yaml.safe_load(text) if root is not None else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        raise ConfigError(f"{path}:{line} cannot parse config: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a config file must hold a mapping of sections, got {type(data).__name__}")
    lines: Dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                name = f"{prefix}{k.value}"
                lines[name] = k.start_mark.line + 1
                walk(v, name + ".")
    walk(root, "")
    return data, lines


def _merge_layer(merged: Dict[str, Any], layer: Dict[str, Any], origin: str,
                 lines: Optional[Dict[str, int]] = None) -> None:
    """Validate `layer`'s keys against the schema and merge it into `merged` in place."""
    layer, lines = expand_flat_keys(layer, origin, lines, reserved=tuple(SECTIONS) + tuple(TOP_LEVEL))

    def where(key):
        if lines and key in lines:
            return f"{origin}:{lines[key]}: "
        return f"{origin}: " if origin else ""

    for name, value in layer.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where(name)}section {name!r} must be a mapping of keys, got {value!r}")
            allowed = _allowed_keys(SECTIONS[name])
            for key, v in value.items():
                if key not in allowed:
                    raise _unknown_key_error(where(f"{name}.{key}"), f"{name}.{key}", allowed)
                merged.setdefault(name, {})[key] = (v, where(f"{name}.{key}"))
        elif name in TOP_LEVEL:
            merged[name] = (value, where(name))
        else:
            raise _unknown_key_error(where(name), name, list(TOP_LEVEL) + list(SECTIONS))


def parse_overrides(args: List[str]) -> Dict[str, Any]:
    """`--section.key=value` / `--section.key value` / `--key=value` (top level) into a nested dict of
    strings. Raises on anything that is not such an option."""
    out: Dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {arg!r}; overrides look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        else:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"command line: {arg} needs a value (--{body}=VALUE)")
            key, value = body, args[i + 1]
            i += 1
        key = key.replace("-", "_")
        if "." in key:
            section, sub = key.split(".", 1)
            out.setdefault(section, {})[sub] = value
        else:
            out[key] = value
        i += 1
    return out


def build_config(file: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
                 base: Optional[Dict[str, Any]] = None, apply_demo_preset: bool = True) -> RLHFConfig:
    """Build a validated RLHFConfig from layers: defaults, demo preset, `base` dict, file, overrides.

    `base` is a plain dict (as from `RLHFConfig.to_dict()` or user code); `overrides` is the nested
    dict of `parse_overrides`. Errors name the origin (file:line or 'command line'), key and allowed
    values.
    """
    merged: Dict[str, Any] = {}
    if base:
        _merge_layer(merged, base, "config")
    if file:
        data, lines = _load_file(file)
        _merge_layer(merged, data, file, lines)
    if overrides:
        _merge_layer(merged, overrides, "command line")

    model_layer = merged.get("model", {})
    name_or_path = model_layer.get("name_or_path", (None, ""))[0]
    if apply_demo_preset and (name_or_path is None or str(name_or_path).lower() in ("none", "null", "")):
        preset: Dict[str, Any] = {}
        _merge_layer(preset, DEMO_PRESET, "demo preset")
        for section, values in preset.items():
            for key, v in values.items():
                merged.setdefault(section, {}).setdefault(key, v)

    kwargs: Dict[str, Any] = {}
    for name, tp in TOP_LEVEL.items():
        if name in merged:
            value, where = merged[name]
            fld = next(f for f in dataclasses.fields(RLHFConfig) if f.name == name)
            kwargs[name] = _coerce(value, tp, name, where)
            _check_bounds(kwargs[name], fld.metadata, name, where)
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in merged.get(name, {}):
                raw, where = merged[name][f.name]
                values[f.name] = _coerce(raw, hints[f.name], f"{name}.{f.name}", where)
            else:
                where = ""
            value = values.get(f.name, getattr(cls(), f.name))
            _check_bounds(value, f.metadata, f"{name}.{f.name}", where)
        try:
            kwargs[name] = cls(**values)
        except ConfigError as e:           # the section's own cross-key check; its message starts with the key
            where = next(iter(merged.get(name, {}).values()), (None, ""))[1]
            raise ConfigError(f"{where}{name}.{e}") from None
    cfg = RLHFConfig(**kwargs)
    validate(cfg)
    return cfg


def validate(cfg: RLHFConfig) -> None:
    """Cross-field checks that single-field bounds cannot express."""
    if cfg.data.max_prompt_length >= cfg.data.max_length:
        raise ConfigError(f"data.max_prompt_length ({cfg.data.max_prompt_length}) must be below "
                          f"data.max_length ({cfg.data.max_length}) to leave room for a response")
    completions = cfg.ppo.rollout_batch_size * cfg.ppo.n_samples
    if cfg.ppo.minibatch_size > completions or completions % cfg.ppo.minibatch_size:
        raise ConfigError(f"ppo.minibatch_size ({cfg.ppo.minibatch_size} completions) must divide the "
                          f"{completions} completions of a rollout (ppo.rollout_batch_size "
                          f"{cfg.ppo.rollout_batch_size} prompts x ppo.n_samples {cfg.ppo.n_samples}); change "
                          f"ppo.minibatch_size")
    if cfg.generation.min_new_tokens > cfg.generation.max_new_tokens:
        raise ConfigError(f"generation.min_new_tokens ({cfg.generation.min_new_tokens}) exceeds "
                          f"generation.max_new_tokens ({cfg.generation.max_new_tokens})")
    if cfg.ppo.dual_clip is not None and cfg.ppo.dual_clip <= 1.0:
        raise ConfigError(f"ppo.dual_clip must be > 1 (or null), got {cfg.ppo.dual_clip}")
    for part in [p.strip() for p in cfg.lora.apply_to.split(",") if p.strip()]:
        if part not in LORA_ROLES:
            raise ConfigError(f"lora.apply_to: {part!r} is not allowed; allowed: {', '.join(LORA_ROLES)}")
    if cfg.lora.quantization != "none" and cfg.lora.r == 0:
        raise ConfigError("lora.quantization needs LoRA adapters: set lora.r > 0 (a 4-bit base cannot be "
                          "fully fine-tuned)")


# ---------------------------------------------------------------------------- resuming

# What a resumed stage compares with the checkpoint's configuration: top-level keys, whole sections
# ("sft") or single keys ("sft.data_path"). Keys outside a stage's scope belong to other stages and
# may change freely. A stage not listed here compares everything.
_COMMON_SCOPE = ("seed", "task", "save_interval", "model", "data", "lora", "deepspeed", "logging")
RESUME_SCOPE: Dict[str, Tuple[str, ...]] = {
    "sft": _COMMON_SCOPE + ("sft",),
    "reward": _COMMON_SCOPE + ("reward",),
    # PPO's ptx loss reads the SFT data when ppo.ptx_data_path is unset.
    "ppo": _COMMON_SCOPE + ("ppo", "generation", "hybrid", "sft.data_path"),
    # DPO samples held-out prompts (generation) for its gold-reward and KL evaluation.
    "dpo": _COMMON_SCOPE + ("dpo", "generation", "hybrid"),
}
# Keys of a scope that other stages own: the SFT stage does not read the models that later stages start from.
_RESUME_IGNORED: Dict[str, Tuple[str, ...]] = {
    "sft": ("model.sft_model_path", "model.reward_model_path", "model.critic_init"),
    "reward": ("model.reward_model_path", "model.critic_init"),
    "dpo": ("model.reward_model_path", "model.critic_init"),
}
# Keys whose change a resume applies (and logs): they decide when to log, evaluate or save, or how fast
# the same numbers are computed, never what is trained. Every other key in scope must keep the value
# the checkpoint was written with: a learning rate, a step count, a batch size or a schedule that
# changed mid-run would make the restored optimizer and scheduler states describe another run.
RESUME_ALLOWED = frozenset({
    "save_interval", "logging.*", "sft.eval_interval", "reward.eval_interval", "ppo.eval_interval",
    "ppo.eval_prompt_path", "ppo.use_kernels", "model.gradient_checkpointing", "model.attn_implementation",
    "deepspeed.offload_inference", "hybrid.*", "dpo.eval_interval", "dpo.eval_prompt_path",
    "dpo.precompute_reference",
})


@dataclasses.dataclass(frozen=True)
class ResumeChange:
    key: str          # dotted, as on the command line
    saved: Any        # the checkpoint's value
    now: Any          # this run's value
    allowed: bool     # in RESUME_ALLOWED: applied and logged; otherwise the resume is refused


def _flat(cfg: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for name, value in cfg.items():
        if isinstance(value, dict):
            out.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            out[name] = value
    return out


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) or key.startswith(p + ".")
               for p in patterns)


def resume_allowed(stage: str, scope: Optional[Iterable[str]] = None) -> List[str]:
    """The RESUME_ALLOWED patterns within `stage`'s scope (all of them for an unknown stage)."""
    scope = tuple(scope) if scope is not None else RESUME_SCOPE.get(stage)
    return sorted(p for p in RESUME_ALLOWED if scope is None or _matches(p, scope))


def resume_changes(stage: str, saved: Dict[str, Any], now: Dict[str, Any],
                   scope: Optional[Iterable[str]] = None) -> List[ResumeChange]:
    """The keys of `stage`'s scope (default RESUME_SCOPE[stage]; everything for an unknown stage) whose
    value in `now` differs from `saved` (both `RLHFConfig.to_dict()`), each marked allowed or not.
    `resume` and `save_dir` are never compared: they are how a resume is asked for and where it is."""
    scope = tuple(scope) if scope is not None else RESUME_SCOPE.get(stage)
    ignored = _RESUME_IGNORED.get(stage, ())
    a, b = _flat(saved), _flat(now)
    changes = []
    for key in sorted(set(a) | set(b)):
        if key in ("resume", "save_dir") or _matches(key, ignored):
            continue
        if scope is not None and not _matches(key, scope):
            continue
        if a.get(key) != b.get(key):
            changes.append(ResumeChange(key, a.get(key), b.get(key), _matches(key, RESUME_ALLOWED)))
    return changes


def load_config(source: Any = None, overrides: Optional[List[str]] = None) -> RLHFConfig:
    """Load from an RLHFConfig, a dict, a JSON/YAML path or None (defaults), plus CLI-style overrides."""
    parsed = parse_overrides(overrides or [])
    if isinstance(source, RLHFConfig):
        return build_config(base=source.to_dict(), overrides=parsed, apply_demo_preset=False)
    if isinstance(source, dict):
        return build_config(base=source, overrides=parsed)
    if isinstance(source, (str, os.PathLike)):
        return build_config(file=str(source), overrides=parsed)
    if source is None:
        return build_config(overrides=parsed)
    raise ConfigError(f"cannot build a config from {type(source).__name__}; give a dict, a path or RLHFConfig")


def describe() -> str:
    """Every key with its default and help text, for `python -m rlhf_ds.config`."""
    lines = []
    for name, tp in TOP_LEVEL.items():
        f = next(x for x in dataclasses.fields(RLHFConfig) if x.name == name)
        lines.append(f"--{name}  (default {f.default!r})  {f.metadata.get('help', '')}")
    for name, cls in SECTIONS.items():
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices")
            allowed = f"  one of: {', '.join(choices)}" if choices else ""
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"--{name}.{f.name}  (default {default!r})  {f.metadata.get('help', '')}{allowed}")
            item = typing.get_args(typing.get_type_hints(cls)[f.name])
            if item and dataclasses.is_dataclass(item[0]):          # a list of small sections: its keys
                for g in dataclasses.fields(item[0]):
                    choices = g.metadata.get("choices")
                    allowed = f"  one of: {', '.join(choices)}" if choices else ""
                    lines.append(f"    {f.name}[].{g.name}  (default {g.default!r})  {g.metadata.get('help', '')}"
                                 f"{allowed}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
