"""Rewards from a Python function, named `package.module:function` or `path/to/file.py:function`.

The function is called once per batch of completions (the rows one rank scores), with keyword
arguments, as TRL calls its `reward_funcs`:

    def reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

- `prompts[i]`: the text of the prompt that completion i answers (its last user turn); with n
  samples per prompt, each prompt appears n times in a row.
- `completions[i]`: the decoded response, special tokens removed.
- `columns`: every other column of the prompt records (an `answer`, a test case, ...), one list
  per column aligned with the completions; None where a record lacks that column. A function
  without `**kwargs` receives only the columns it names as parameters.
- The result: one number per completion, or None where the reward does not apply (the row then
  gets nothing from this source, and the source's logged mean leaves it out).

`async def` functions are awaited. A function that raises, returns the wrong number of values, a
non-number or NaN stops the run with the source's name and the offending row (see values.py).
A file named by path is imported as a module of its own; it is not put on `sys.path`.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..config_schema import ConfigError
from .base import RewardBatch, RewardSourceError, SourceScores
from .values import describe_row, scores_from_values

RESERVED = ("prompts", "completions")   # argument names a column cannot take


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or "(no message)"


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def _import_file(path: str):
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file")
    # A name of its own per file, so two reward files called `reward.py` never share a module.
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    name = f"rlhf_ds_reward_file_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_function(spec: str) -> Callable:
    """The callable that `spec` (`package.module:function` or `path/to/file.py:function`) names.
    Raises ConfigError saying what is missing."""
    module_name, sep, attr = str(spec).rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{spec!r} is not a function name; expected package.module:function or "
                          "path/to/file.py:function")
    try:
        module = _import_file(module_name) if _is_path(module_name) else importlib.import_module(module_name)
    except ConfigError:
        raise
    except SyntaxError as e:
        raise ConfigError(f"{e.filename}:{e.lineno}: syntax error: {e.msg}") from None
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ConfigError(f"no module named {module_name!r} (is it installed, or did you mean a file "
                              "path/to/file.py?)") from None
        raise ConfigError(f"importing {module_name!r} failed: {type(e).__name__}: {_one_line(e)}") from None
    except Exception as e:
        raise ConfigError(f"importing {module_name!r} failed: {type(e).__name__}: {_one_line(e)}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise ConfigError(f"{module_name!r} has no {attr!r}; functions there: {', '.join(found) or 'none'}")
    if not callable(fn):
        raise ConfigError(f"{spec!r} is a {type(fn).__name__}, not a function")
    return fn


def _resolve(result: Any) -> Any:
    """The value of `result`, awaiting it when the function was async."""
    if not inspect.isawaitable(result):
        return result

    async def wait():
        return await result

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    # Called from code that already runs an event loop: that loop cannot be re-entered, so the
    # coroutine gets a loop of its own on a worker thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wait()).result()


@dataclass
class FunctionSource:
    """A `RewardSource` that calls a Python function (see the module docstring)."""
    name: str
    fn: Callable
    _wants: Optional[List[str]] = field(default=None, init=False, repr=False)  # None: every column

    def __post_init__(self):
        try:
            params = inspect.signature(self.fn).parameters.values()
        except (TypeError, ValueError):      # builtins without a signature get everything
            return
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            self._wants = [p.name for p in params if p.name not in RESERVED
                           and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def _arguments(self, batch: RewardBatch, rows: Optional[List[int]] = None) -> Dict[str, Any]:
        pick = (lambda xs: list(xs)) if rows is None else (lambda xs: [xs[i] for i in rows])
        names = [c for c in batch.columns if c not in RESERVED] if self._wants is None else \
            [c for c in self._wants if c in batch.columns]
        return {"prompts": pick(batch.prompts), "completions": pick(batch.completions),
                **{c: pick(batch.columns[c]) for c in names}}

    def _call(self, batch: RewardBatch, rows: Optional[List[int]] = None) -> Any:
        return _resolve(self.fn(**self._arguments(batch, rows)))

    def _failing_row(self, batch: RewardBatch) -> int:
        """The first row on which the function raises when called on that row alone (-1: none
        does, the failure needs the whole batch). Runs only after a failure, to name the row."""
        for row in range(len(batch)):
            try:
                self._call(batch, [row])
            except Exception:
                return row
        return -1

    def __call__(self, batch: RewardBatch) -> SourceScores:
        try:
            values = self._call(batch)
        except Exception as e:
            what = f"raised {type(e).__name__}: {_one_line(e)}"
            if isinstance(e, TypeError) and "argument" in str(e):
                what += f" (it is called as fn(prompts=..., completions=..., **columns); columns here: " \
                        f"{', '.join(batch.columns) or 'none'})"
            row = self._failing_row(batch)
            where = f"; {describe_row(batch, row)}" if row >= 0 else ""
            raise RewardSourceError(self.name, what + where, row) from None
        return scores_from_values(self.name, values, batch)


def function_source(spec: str, name: Optional[str] = None) -> FunctionSource:
    """A source for the function `spec` names, logged under `name` (default: the function's name)."""
    fn = load_function(spec)
    return FunctionSource(name or getattr(fn, "__name__", spec.rpartition(":")[2]), fn)
