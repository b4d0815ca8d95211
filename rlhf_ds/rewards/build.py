"""Reward sources from the configuration (`rewards.sources`), each with its weight.

    sources = sources_from_config(cfg.rewards.sources, model_source=lambda: RewardModelSource(...))
    total, parts = combine_on_every_rank(sources, batch)

The reward model is built only when a source asks for it (`needs_reward_model`), through the
factory the trainer passes: it alone knows the engines. Functions are imported here, on every
rank, so a wrong name stops the run before anything is trained (ConfigError naming the key).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

from ..config_schema import ConfigError, RewardSourceConfig
from .base import RewardSource
from .function import FunctionSource, load_function
from .http import HTTPSource


def needs_reward_model(specs: Sequence[RewardSourceConfig]) -> bool:
    return any(s.type == "model" for s in specs)


def _function(spec: RewardSourceConfig, key: str) -> RewardSource:
    try:
        fn = load_function(spec.function)
    except ConfigError as e:
        raise ConfigError(f"{key}.function: {e}") from None
    return FunctionSource(spec.label(), fn)


def _http(spec: RewardSourceConfig, key: str) -> RewardSource:
    if not spec.url.startswith(("http://", "https://")):
        raise ConfigError(f"{key}.url: {spec.url!r} is not an http:// or https:// address")
    return HTTPSource(spec.label(), spec.url, timeout_s=spec.timeout_s, retries=spec.retries,
                      backoff_s=spec.backoff_s, max_in_flight=spec.max_in_flight, chunk_size=spec.chunk_size)


_BUILDERS = {"function": _function, "http": _http}


def sources_from_config(specs: Sequence[RewardSourceConfig],
                        model_source: Optional[Callable[[], RewardSource]] = None,
                        key: str = "rewards.sources") -> List[Tuple[RewardSource, float]]:
    """(source, weight) for each entry of `specs`, in order. `model_source` builds the reward-model
    source (called once, only if an entry has type model); it is logged under the entry's label."""
    if not specs:
        raise ConfigError(f"{key}: the list is empty; name at least one reward source")
    out: List[Tuple[RewardSource, float]] = []
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        if spec.type == "model":
            if model_source is None:
                raise ConfigError(f"{where}: type model needs a trained reward model, and this run has none; use "
                                  "type function or http")
            source = model_source()
            source.name = spec.label()
        else:
            source = _BUILDERS[spec.type](spec, where)
        out.append((source, spec.weight))
    return out
