"""Reward sources behind one interface (see base.py).

    base.py        RewardBatch -> SourceScores, RewardSource, combine (weighted sum), RewardSourceError
    values.py      a function's or endpoint's plain values checked into SourceScores
    function.py    `package.module:function` / `path/to/file.py:function`, sync or async
    http.py        POST JSON to an endpoint: chunks, bounded requests in flight, retries with backoff
    build.py       sources from `rewards.sources` in the config
    collective.py  a failure on one rank stops every rank; per-source means over ranks for the logs
"""
from .base import RewardBatch, RewardSource, RewardSourceError, SourceScores, columns_from_meta, combine
from .build import needs_reward_model, sources_from_config
from .collective import combine_on_every_rank, source_metrics
from .function import FunctionSource, function_source, load_function
from .http import HTTPSource

__all__ = ["FunctionSource", "HTTPSource", "RewardBatch", "RewardSource", "RewardSourceError", "SourceScores",
           "columns_from_meta", "combine", "combine_on_every_rank", "function_source", "load_function",
           "needs_reward_model", "source_metrics", "sources_from_config"]
