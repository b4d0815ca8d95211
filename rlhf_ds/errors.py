"""Errors that are the user's to fix, and how the command-line tools report them.

A user error (a bad config value, data that cannot be used, a model path with no model, LoRA
targets that match nothing, a run that cannot fit in memory) ends a command with one line,
`prog: message`, on stderr and exit status 2, on every rank, without a traceback: the traceback
would point into rlhf_ds, when the thing to change is the user's file or flag. Anything else is a
bug and keeps its traceback.

Every rank reaches the same error (they all read the same config and data), so each prints its
line and exits; the deepspeed launcher then exits with the same status.

Errors defined here subclass ValueError, so code that already catches ValueError still does.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Tuple, Type


class UserError(ValueError):
    """Something the user must change (a flag, a file, a path); the message says what."""


class DataError(UserError):
    """A data file or dataset that cannot be used as a whole: empty, of an unknown type or format,
    too small for what the run asks of it. (One bad record is a `DataFormatError`, naming its line.)"""


class PathNotFoundError(UserError, FileNotFoundError):
    """A model, tokenizer or DeepSpeed-config path with nothing usable behind it."""


def user_error_types() -> Tuple[Type[BaseException], ...]:
    """Every exception class that is reported as a user error. The classes live beside the code that
    raises them; they are imported here, when a command starts, so this module stays import-light."""
    from .config_schema import ConfigError
    from .data.chat import ChatTemplateError
    from .data.records import DataFormatError
    from .engine.quantized import QuantizedStageError
    from .lora_settings import LoRAConfigError
    from .memory import OutOfMemoryRefusal
    from .memory_estimate import MemoryEstimateError
    from .rewards.base import RewardSourceError   # a reward function or endpoint that fails on real data

    return (UserError, ConfigError, DataFormatError, ChatTemplateError, LoRAConfigError, MemoryEstimateError,
            QuantizedStageError, OutOfMemoryRefusal, RewardSourceError, FileNotFoundError)


@contextlib.contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Run a command's body; a user error becomes `prog: message` on stderr and SystemExit(2)."""
    types = user_error_types()
    try:
        yield
    except types as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
