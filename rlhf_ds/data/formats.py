"""The input formats: how each is recognised and how a row becomes a record.

    name                      kind        a row looks like
    prompt_response           sft         {prompt, response}
    alpaca                    sft         {instruction, input?, output}      (Alpaca, Belle)
    chat                      sft         {messages: [{role, content}, ...]} ending with assistant
    rm_static                 preference  {prompt, response, chosen, rejected} (Dahoas rm-static)
    prompt_chosen_rejected    preference  {prompt, chosen, rejected, margin?}
    question_chosen_rejected  preference  {question, chosen, rejected, margin?}
    hh                        preference  {chosen, rejected}: whole "\\n\\nHuman: ..." dialogues
    chat_pair                 preference  {chosen, rejected}: whole message lists, shared prompt
    ranking                   ranking     {prompt, responses: [...], ranks?: [...]}
    kto                       unpaired    {prompt, completion, label}: label true = desirable (KTO)
    prompt_text               prompt      "a JSON string" or a plain text line
    prompt_field              prompt      {prompt, ...other fields kept as meta}
    prompt_messages           prompt      {messages} ending with a user turn

Prompts are text (one user turn) or message lists; responses are text (one assistant
turn) or message lists (see `messages.py`). `margin` is an optional finite number.

Detection looks at the first rows of a file and takes the format most of them match
(the first match in the table's order for each row). Alpaca's `input` may be empty
or absent; the user turn is then the instruction alone, else `instruction + "\\n\\n" +
input`. K-wise `ranks` (0 = best, ties allowed) must be non-negative integers, one
per response; without `ranks` the responses are taken as already ordered best first.
Ranks are re-numbered densely after sorting, so `[2, 5, 5]` becomes `[0, 1, 1]`.
The three prompt shapes may be mixed in one file. A KTO `label` is true or false (JSON
booleans, or the text true/false/1/0 that CSV cells hold).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from rlhf_ds.data import messages as M
from rlhf_ds.data.records import (KINDS, PreferenceRecord, PromptRecord, RankingRecord, Record,
                                  SFTRecord, UnpairedRecord, user)

FieldError = M.FieldError


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    kind: str
    detect: Callable[[Any], bool]        # cheap shape test on a raw row value
    parse: Callable[[Any], Record]       # full validation; raises FieldError
    prompt_keys: Tuple[str, ...] = ()    # fields that form the prompt (the rest -> PromptRecord.meta)


def _obj(row: Any) -> Mapping:
    if not isinstance(row, Mapping):
        raise FieldError(f"expected a JSON object, got {M.type_name(row)}")
    return row


def _has(row: Any, *keys: str, without: Iterable[str] = ()) -> bool:
    return (isinstance(row, Mapping) and all(k in row for k in keys)
            and not any(k in row for k in without))


def _last_role(row: Any, key: str) -> Optional[str]:
    value = row.get(key) if isinstance(row, Mapping) else None
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        return value[-1].get("role")
    return None


def _distinct(chosen, rejected) -> None:
    if chosen == rejected:
        raise FieldError("'chosen' and 'rejected' are identical")


# ------------------------------------------------------------------- SFT

def _prompt_response(row) -> SFTRecord:
    row = _obj(row)
    prompt = M.prompt_messages(row, "prompt")
    return SFTRecord(prompt + M.response_messages(row, "response", prompt))


def _alpaca(row) -> SFTRecord:
    row = _obj(row)
    instruction = M.text_field(row, "instruction")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise FieldError(f"field 'input': expected a string, got {M.type_name(extra)}")
    text = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return SFTRecord(user(text) + M.response_messages(row, "output"))


def _chat(row) -> SFTRecord:
    msgs = M.to_messages(M.require(_obj(row), "messages"), "messages")
    if msgs[-1].role != "assistant":
        raise FieldError("field 'messages': the last message must be from the assistant "
                         f"(got {msgs[-1].role!r}); there is nothing to learn after it")
    return SFTRecord(msgs)


# ------------------------------------------------------------ preference

def _pair(row, prompt_key: str) -> PreferenceRecord:
    row = _obj(row)
    prompt = M.prompt_messages(row, prompt_key)
    chosen = M.response_messages(row, "chosen", prompt)
    rejected = M.response_messages(row, "rejected", prompt)
    _distinct(chosen, rejected)
    return PreferenceRecord(prompt, chosen, rejected, M.optional_margin(row))


def _rm_static(row) -> PreferenceRecord:
    row = _obj(row)
    prompt_text = M.text_field(row, "prompt")
    if "Human:" not in prompt_text:
        return _pair(row, "prompt")
    # Dahoas/DeepSpeed-Chat: the prompt is HH text ending in "Assistant:", the
    # responses are its continuations (with a leading space).
    prompt = M.hh_prompt(prompt_text, "prompt")
    chosen = M.assistant(M.text_field(row, "chosen").strip())
    rejected = M.assistant(M.text_field(row, "rejected").strip())
    _distinct(chosen, rejected)
    return PreferenceRecord(prompt, chosen, rejected, M.optional_margin(row))


def _hh(row) -> PreferenceRecord:
    row = _obj(row)
    prefix, chosen, rejected = M.split_hh(M.text_field(row, "chosen"), M.text_field(row, "rejected"))
    return PreferenceRecord(M.hh_prompt(prefix, "chosen"), M.hh_response(chosen, "chosen"),
                            M.hh_response(rejected, "rejected"), M.optional_margin(row))


def _chat_pair(row) -> PreferenceRecord:
    row = _obj(row)
    chosen = M.to_messages(M.require(row, "chosen"), "chosen")
    rejected = M.to_messages(M.require(row, "rejected"), "rejected")
    prompt, chosen, rejected = M.shared_message_prompt(chosen, rejected)
    for name, resp in (("chosen", chosen), ("rejected", rejected)):
        if resp[-1].role != "assistant":
            raise FieldError(f"field '{name}': the conversation must end with an assistant message")
    return PreferenceRecord(prompt, chosen, rejected, M.optional_margin(row))


# --------------------------------------------------------------- ranking

def _ranking(row) -> RankingRecord:
    row = _obj(row)
    prompt = M.prompt_messages(row, "prompt")
    raw = M.require(row, "responses")
    if not isinstance(raw, list):
        raise FieldError(f"field 'responses': expected a list, got {M.type_name(raw)}")
    if len(raw) < 2:
        raise FieldError(f"field 'responses': need at least 2 responses to rank, got {len(raw)}")
    responses = [M.response_messages({f"responses[{i}]": r}, f"responses[{i}]", prompt)
                 for i, r in enumerate(raw)]
    ranks = row.get("ranks")
    if ranks is None:
        return RankingRecord(prompt, responses, list(range(len(responses))), M.optional_margin(row))
    if not isinstance(ranks, list):
        raise FieldError(f"field 'ranks': expected a list of integers, got {M.type_name(ranks)}")
    if len(ranks) != len(responses):
        raise FieldError(f"field 'ranks' has {len(ranks)} entries but 'responses' has {len(responses)}")
    for i, r in enumerate(ranks):
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise FieldError(f"field 'ranks'[{i}]: expected a non-negative integer, got {r!r}")
    order = sorted(range(len(ranks)), key=lambda i: ranks[i])   # stable: ties keep file order
    dense = {r: d for d, r in enumerate(sorted(set(ranks)))}
    return RankingRecord(prompt, [responses[i] for i in order], [dense[ranks[i]] for i in order],
                         M.optional_margin(row))


# -------------------------------------------------------------- unpaired

_LABELS = {"true": True, "1": True, "false": False, "0": False}


def _label(row: Mapping) -> bool:
    value = M.require(row, "label")
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    raise FieldError(f"field 'label': expected true (desirable) or false (undesirable), got {value!r}")


def _kto(row) -> UnpairedRecord:
    row = _obj(row)
    prompt = M.prompt_messages(row, "prompt")
    return UnpairedRecord(prompt, M.response_messages(row, "completion", prompt), _label(row))


# ---------------------------------------------------------------- prompts

def _meta(row: Mapping, used: Tuple[str, ...]) -> Dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


def _prompt_any(row) -> PromptRecord:
    """Any of the three prompt shapes (they may be mixed in one file)."""
    if isinstance(row, str):
        if not row.strip():
            raise FieldError("empty prompt")
        return PromptRecord(user(row))
    row = _obj(row)
    if "prompt" in row:
        return PromptRecord(M.prompt_messages(row, "prompt"), _meta(row, ("prompt",)))
    if "messages" in row:
        return PromptRecord(M.prompt_messages(row, "messages"), _meta(row, ("messages",)))
    raise FieldError("missing field 'prompt' (or 'messages')")


_RESPONSE_KEYS = ("response", "chosen", "rejected", "responses", "output")

FORMATS: Dict[str, Format] = {f.name: f for f in [
    Format("rm_static", "preference", lambda r: _has(r, "prompt", "response", "chosen", "rejected"),
           _rm_static, ("prompt", "response", "chosen", "rejected")),
    Format("prompt_chosen_rejected", "preference",
           lambda r: _has(r, "prompt", "chosen", "rejected", without=("response",)),
           lambda r: _pair(r, "prompt"), ("prompt",)),
    Format("question_chosen_rejected", "preference", lambda r: _has(r, "question", "chosen", "rejected"),
           lambda r: _pair(r, "question"), ("question",)),
    Format("hh", "preference", lambda r: _has(r, "chosen", "rejected", without=("prompt", "question"))
           and isinstance(r["chosen"], str), _hh, ("chosen", "rejected")),
    Format("chat_pair", "preference", lambda r: _has(r, "chosen", "rejected", without=("prompt", "question"))
           and isinstance(r["chosen"], list), _chat_pair, ("chosen", "rejected")),
    Format("ranking", "ranking", lambda r: _has(r, "prompt", "responses"), _ranking, ("prompt",)),
    Format("kto", "unpaired", lambda r: _has(r, "prompt", "completion", "label"), _kto,
           ("prompt", "completion", "label")),
    Format("prompt_response", "sft", lambda r: _has(r, "prompt", "response"), _prompt_response, ("prompt",)),
    Format("alpaca", "sft", lambda r: _has(r, "instruction", "output"), _alpaca, ("instruction", "input")),
    Format("chat", "sft", lambda r: _has(r, "messages") and _last_role(r, "messages") == "assistant",
           _chat, ("messages",)),
    Format("prompt_text", "prompt", lambda r: isinstance(r, str), _prompt_any),
    Format("prompt_field", "prompt", lambda r: _has(r, "prompt", without=_RESPONSE_KEYS), _prompt_any),
    Format("prompt_messages", "prompt", lambda r: _has(r, "messages", without=_RESPONSE_KEYS)
           and _last_role(r, "messages") != "assistant", _prompt_any),
]}

# Which formats can feed each requested kind: pairs are K=2 rankings, and the
# prompts of any labelled data can drive generation.
ACCEPTS = {
    "sft": ("sft",),
    "preference": ("preference",),
    "ranking": ("ranking", "preference"),
    "unpaired": ("unpaired",),
    "prompt": ("prompt", "sft", "preference", "ranking", "unpaired"),
}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; allowed: {', '.join(FORMATS)}")
    return FORMATS[name]


def check_kind(kind: Optional[str]) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")


def candidates(kind: Optional[str]) -> List[Format]:
    """Formats considered for `kind` (all when None), native kind first."""
    check_kind(kind)
    if kind is None:
        return list(FORMATS.values())
    order = ACCEPTS[kind]
    return sorted((f for f in FORMATS.values() if f.kind in order), key=lambda f: order.index(f.kind))


def detect_one(value: Any, kind: Optional[str] = None) -> Optional[Format]:
    for fmt in candidates(kind):
        try:
            if fmt.detect(value):
                return fmt
        except Exception:           # a detector must never be the thing that fails
            continue
    return None


def detect(values: Iterable[Any], kind: Optional[str] = None, sample: int = 200) -> Optional[Format]:
    """The format most of the first `sample` values match; None if none matches."""
    votes: Counter = Counter()
    order = {f.name: i for i, f in enumerate(candidates(kind))}
    for i, value in enumerate(values):
        if i >= sample:
            break
        fmt = detect_one(value, kind)
        if fmt is not None:
            votes[fmt.name] += 1
    if not votes:
        return None
    best = max(votes.items(), key=lambda kv: (kv[1], -order[kv[0]]))[0]
    return FORMATS[best]


def convert(record: Record, kind: str, row: Any, fmt: Format) -> Record:
    """A record of `fmt.kind` as the requested `kind` (see `ACCEPTS`)."""
    if kind == "ranking" and isinstance(record, PreferenceRecord):
        return record.to_ranking()
    if kind == "prompt" and not isinstance(record, PromptRecord):
        prompt = record.prompt() if isinstance(record, SFTRecord) else record.prompt
        if not prompt:
            raise FieldError("the conversation has no prompt before its first assistant turn")
        meta = _meta(row, fmt.prompt_keys) if isinstance(row, Mapping) else {}
        return PromptRecord(list(prompt), meta)
    return record
