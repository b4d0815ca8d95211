"""Turning raw field values into messages, and the dialogue-splitting rules.

Field checks raise `FieldError(reason)`; the loader adds the record's location, so
the user reads `train.jsonl:12: field 'chosen': expected a string or a list of
messages, got int`.

Anthropic-HH: each of `chosen` / `rejected` is a whole dialogue
`"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: ..."`. The prompt is
their shared prefix up to and including the last `"\\n\\nAssistant:"` that both share;
what follows is each response. The prompt text is then split at its Human/Assistant
markers into user/assistant messages (contents stripped), so HH data goes through the
same chat template as everything else.
"""
from __future__ import annotations

import math
import re
from typing import Any, List, Mapping, Optional, Tuple

from rlhf_ds.data.records import ROLES, Message, Messages, assistant, user


class FieldError(ValueError):
    """A problem with one record's fields (its location is added by the loader)."""


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)


def require(row: Mapping, key: str) -> Any:
    if key not in row or row[key] is None:
        raise FieldError(f"missing field '{key}'")
    return row[key]


def text_field(row: Mapping, key: str, allow_empty: bool = False) -> str:
    value = require(row, key)
    if not isinstance(value, str):
        raise FieldError(f"field '{key}': expected a string, got {type_name(value)}")
    if not allow_empty and not value.strip():
        raise FieldError(f"field '{key}' is empty")
    return value


def optional_margin(row: Mapping) -> Optional[float]:
    """A finite number, or text holding one (CSV cells are text, see readers.py)."""
    value = row.get("margin")
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise FieldError(f"field 'margin': expected a finite number, got {value!r}")
    return float(number)


def to_messages(value: Any, field: str) -> Messages:
    """A list of `{role, content}` objects -> messages, checking every entry."""
    if not isinstance(value, list):
        raise FieldError(f"field '{field}': expected a list of messages, got {type_name(value)}")
    if not value:
        raise FieldError(f"field '{field}' is an empty list")
    out = []
    for i, m in enumerate(value):
        where = f"field '{field}'[{i}]"
        if not isinstance(m, Mapping):
            raise FieldError(f"{where}: expected an object with 'role' and 'content', got {type_name(m)}")
        role, content = m.get("role"), m.get("content")
        if role is None:
            raise FieldError(f"{where}: missing 'role'")
        if role not in ROLES:
            raise FieldError(f"{where}: unknown role {role!r} (allowed: {', '.join(ROLES)})")
        if content is None:
            raise FieldError(f"{where}: missing 'content'")
        if not isinstance(content, str):
            raise FieldError(f"{where}.content: expected a string, got {type_name(content)}")
        out.append(Message(role, content))
    return out


def prompt_messages(row: Mapping, key: str) -> Messages:
    """A prompt field: plain text (one user turn) or a message list not ending with
    an assistant turn (the model answers next)."""
    value = require(row, key)
    if isinstance(value, str):
        if not value.strip():
            raise FieldError(f"field '{key}' is empty")
        return user(value)
    if isinstance(value, list):
        msgs = to_messages(value, key)
        if msgs[-1].role == "assistant":
            raise FieldError(f"field '{key}': a prompt must not end with an assistant message")
        return msgs
    raise FieldError(f"field '{key}': expected a string or a list of messages, got {type_name(value)}")


def response_messages(row: Mapping, key: str, prompt: Optional[Messages] = None) -> Messages:
    """A response field: plain text (one assistant turn), one message object, or a
    message list. A list that repeats the prompt first has the prompt removed."""
    value = require(row, key)
    if isinstance(value, str):
        if not value.strip():
            raise FieldError(f"field '{key}' is empty")
        return assistant(value)
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise FieldError(f"field '{key}': expected a string or a list of messages, got {type_name(value)}")
    msgs = to_messages(value, key)
    if prompt and len(msgs) > len(prompt) and msgs[:len(prompt)] == prompt:
        msgs = msgs[len(prompt):]
    if msgs[0].role != "assistant":
        raise FieldError(f"field '{key}': a response must start with an assistant message, "
                         f"got role {msgs[0].role!r}")
    if msgs[-1].role != "assistant":
        raise FieldError(f"field '{key}': a response must end with an assistant message")
    return msgs


def shared_message_prompt(chosen: Messages, rejected: Messages) -> Tuple[Messages, Messages, Messages]:
    """Chosen/rejected given as whole conversations with no prompt field: the prompt is
    their longest shared prefix that is followed by an assistant turn in both."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == len(chosen) or k == len(rejected):
        raise FieldError("'chosen' and 'rejected' do not diverge (one is a prefix of the other)")
    while k > 0 and not (chosen[k].role == "assistant" and rejected[k].role == "assistant"):
        k -= 1
    if k == 0:
        raise FieldError("'chosen' and 'rejected' share no prompt before their assistant replies")
    return chosen[:k], chosen[k:], rejected[k:]


# ------------------------------------------------------------ Anthropic HH

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def split_hh(chosen: str, rejected: str) -> Tuple[str, str, str]:
    """`(prompt, chosen_response, rejected_response)` of an HH pair, as raw text:
    the prompt ends with the last `"\\n\\nAssistant:"` inside the shared prefix."""
    n, limit = 0, min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) and n == len(rejected):
        raise FieldError("'chosen' and 'rejected' are identical")
    end = chosen.rfind(HH_ASSISTANT, 0, n)
    if end < 0:
        raise FieldError("'chosen' and 'rejected' share no '\\n\\nAssistant:' turn "
                         "(expected Anthropic-HH dialogues)")
    end += len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def _hh_turns(parts: List[str]) -> Messages:
    return [Message("user" if speaker == "Human" else "assistant", content.strip())
            for speaker, content in zip(parts[1::2], parts[2::2])]


def parse_hh(text: str) -> Messages:
    """Split HH dialogue text at its `Human:` / `Assistant:` markers into messages.
    Text before the first marker becomes a system message; a trailing empty
    `Assistant:` (the cue to answer) is dropped."""
    parts = _HH_TURN.split(text)
    out = ([Message("system", parts[0].strip())] if parts[0].strip() else []) + _hh_turns(parts)
    if out and out[-1].role == "assistant" and not out[-1].content:
        out.pop()
    return out


def hh_response(text: str, field: str) -> Messages:
    """The part of an HH dialogue after the shared prompt: the assistant's answer
    (the text before any marker), then more turns if the dialogues diverged earlier."""
    parts = _HH_TURN.split(text)
    msgs = [Message("assistant", parts[0].strip())] + _hh_turns(parts)
    if not msgs[0].content:
        raise FieldError(f"field '{field}': the response after the shared prompt is empty")
    if msgs[-1].role != "assistant" or not msgs[-1].content:
        raise FieldError(f"field '{field}': the dialogue must end with a non-empty Assistant turn")
    return msgs


def hh_prompt(text: str, field: str) -> Messages:
    msgs = parse_hh(text)
    if not msgs or all(m.role == "system" for m in msgs):
        raise FieldError(f"field '{field}': no Human turn found")
    if msgs[-1].role == "assistant":
        raise FieldError(f"field '{field}': the prompt must end with a Human turn")
    return msgs
