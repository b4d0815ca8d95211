"""Normalised records: what every input format becomes before tokenisation.

Whatever the file looked like (Alpaca, HH, chat messages, K-wise rankings, plain
prompt lines), the rest of the library sees only these small dataclasses. A prompt
is always a list of messages, so one chat template renders every kind the same way
(see `chat.py`); a response is also a list of messages, almost always a single
assistant message, but several when a dialogue continues after the shared prompt.

    SFTRecord         messages: the whole conversation; loss on its assistant turns
    PreferenceRecord  prompt, chosen, rejected (+ optional margin)
    RankingRecord     prompt, responses ordered best first, dense ranks (0 = best)
    UnpairedRecord    prompt, completion, desirable or not (KTO's unpaired feedback)
    PromptRecord      messages to generate from (+ meta: the record's other fields)

Also here: where a record came from (`Location`), the error raised for a bad record
(`DataFormatError`) and the result of loading a file (`LoadResult`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Union

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class Message:
    """One chat turn. `role` is one of `ROLES`."""
    role: str
    content: str

    def as_dict(self) -> Dict[str, str]:
        return {"role": self.role, "content": self.content}


Messages = List[Message]


def user(text: str) -> Messages:
    """A prompt given as plain text: one user turn."""
    return [Message("user", text)]


def assistant(text: str) -> Messages:
    """A response given as plain text: one assistant turn."""
    return [Message("assistant", text)]


@dataclasses.dataclass
class SFTRecord:
    """A conversation to imitate. Ends with an assistant turn; the loss covers every
    assistant turn. `{prompt, response}` and Alpaca rows become `[user, assistant]`."""
    messages: Messages

    def prompt(self) -> Messages:
        """Everything before the final assistant turn (used for PPO prompts and stats)."""
        return self.messages[:-1]


@dataclasses.dataclass
class PreferenceRecord:
    """A pairwise comparison: `chosen` is preferred over `rejected` as a continuation
    of `prompt`. `margin` (how much better, if the data says) is carried as is."""
    prompt: Messages
    chosen: Messages
    rejected: Messages
    margin: Optional[float] = None

    def to_ranking(self) -> "RankingRecord":
        """The same comparison as a K=2 ranking: chosen first with rank 0."""
        return RankingRecord(self.prompt, [self.chosen, self.rejected], [0, 1], self.margin)


@dataclasses.dataclass
class RankingRecord:
    """K >= 2 responses to one prompt, sorted best first. `ranks[i]` is the dense rank
    of `responses[i]` (0 = best; equal ranks are ties), so ranks are non-decreasing."""
    prompt: Messages
    responses: List[Messages]
    ranks: List[int]
    margin: Optional[float] = None


@dataclasses.dataclass
class UnpairedRecord:
    """One completion of `prompt`, marked desirable (True) or undesirable (False), with no
    other response to compare it with: the data of KTO (Ethayarajh et al. 2024)."""
    prompt: Messages
    completion: Messages
    desirable: bool

    def to_ranking(self) -> "RankingRecord":
        """The completion as a ranking of one response (how it is tokenized)."""
        return RankingRecord(self.prompt, [self.completion], [0])


@dataclasses.dataclass
class PromptRecord:
    """A prompt for generation (PPO/GRPO). `meta` holds the record's other fields,
    e.g. a reference answer for a rule-based reward."""
    messages: Messages
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)


Record = Union[SFTRecord, PreferenceRecord, RankingRecord, UnpairedRecord, PromptRecord]

# The kinds of data, named as on the command line (`check --kind`).
KINDS = ("sft", "preference", "ranking", "unpaired", "prompt")


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a record lives: `unit` is "line" (1-based physical line in a text file)
    or "row" (0-based index in a parquet file, a saved dataset or a hub split)."""
    source: str
    number: int
    unit: str = "line"

    def __str__(self) -> str:
        if self.unit == "line":
            return f"{self.source}:{self.number}"
        return f"{self.source}:{self.unit} {self.number}"


class DataFormatError(ValueError):
    """A record that cannot be used, reported as `file:line: what is wrong`."""

    def __init__(self, location: Location, reason: str):
        super().__init__(f"{location}: {reason}")
        self.location = location
        self.reason = reason

    def __reduce__(self):          # picklable across processes (DataLoader workers, spawn)
        return type(self), (self.location, self.reason)


@dataclasses.dataclass
class InvalidRecord:
    """A skipped record (only with `skip_invalid=True`)."""
    location: Location
    error: str

    @property
    def line(self) -> int:
        return self.location.number

    def as_dict(self) -> Dict[str, Any]:
        return {"line": self.location.number, "unit": self.location.unit,
                "where": str(self.location), "error": self.error}


@dataclasses.dataclass
class LoadResult:
    """The outcome of `load_records`: the valid records in file order, what was
    detected, and what was skipped."""
    records: List[Record]
    kind: str
    format: str
    source: str
    invalid: List[InvalidRecord] = dataclasses.field(default_factory=list)
    blank_lines: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    @property
    def num_invalid(self) -> int:
        return len(self.invalid)

    @property
    def errors(self) -> List[tuple]:
        """`(line, error)` pairs of the skipped records."""
        return [(r.line, r.error) for r in self.invalid]

    def summary(self) -> str:
        return (f"{self.source}: {len(self.records)} {self.kind} records "
                f"(format {self.format}), {len(self.invalid)} invalid skipped, "
                f"{self.blank_lines} blank lines")
