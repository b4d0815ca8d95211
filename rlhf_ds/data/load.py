"""Load a file or dataset into normalised records: read -> detect -> parse -> convert.

    result = load_records("train.jsonl", kind="preference")       # LoadResult
    result.records       # [PreferenceRecord, ...] in file order
    result.format        # e.g. "hh"
    result.invalid       # skipped records (only with skip_invalid=True)

A bad record (broken JSON, missing field, wrong type) raises `DataFormatError`
("train.jsonl:12: missing field 'chosen'") unless `skip_invalid=True`, which skips it
and lists it in `result.invalid`. Blank lines are never errors; they are counted.

`kind` narrows detection and converts what it accepts (see `formats.ACCEPTS`):
`kind="ranking"` turns pairs into K=2 rankings, `kind="prompt"` takes the prompts of
any labelled data (other fields go to `PromptRecord.meta`). For prompts, a text line
that is not JSON and does not start like JSON (`{`, `[` or `"`) is a plain-text
prompt; one that does is a broken line.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

from rlhf_ds.data.formats import (ACCEPTS, FORMATS, FieldError, Format, check_kind, convert,
                                  detect, detect_one, get_format)
from rlhf_ds.data.readers import RawRow, read_rows
from rlhf_ds.data.records import DataFormatError, InvalidRecord, LoadResult
from rlhf_ds.errors import DataError, UserError


def _plain_text(row: RawRow) -> Optional[str]:
    """The line itself, when a line that failed to parse as JSON is plain text."""
    if row.json_error and isinstance(row.value, str) and not row.value.lstrip().startswith(("{", "[", '"')):
        return row.value
    return None


def _detection_value(row: RawRow, texts_ok: bool) -> Any:
    if row.json_error is None:
        return row.value
    return _plain_text(row) if texts_ok else None


def _keys(value: Any) -> str:
    if isinstance(value, dict):
        return "keys: " + (", ".join(sorted(map(str, value))) or "none")
    return f"a {type(value).__name__}"


def _undetected(value: Any, kind: Optional[str]) -> str:
    msg = f"no {kind + ' ' if kind else ''}format matches this record ({_keys(value)})"
    other = detect_one(value) if kind else None
    if other is not None:
        msg += f"; it looks like {other.kind} data (format {other.name})"
    return msg + f"; pass format= one of: {', '.join(FORMATS)}"


def load_records(source, kind: Optional[str] = None, format: Optional[str] = None, *,
                 skip_invalid: bool = False, split: str = "train", cache_dir: Optional[str] = None,
                 **load_kwargs) -> LoadResult:
    """Read `source` (file, dataset directory or hub name) into records of `kind`
    ("sft", "preference", "ranking", "prompt"; detected when None). `format` forces a
    format (see `formats.FORMATS`). `load_kwargs` go to `datasets.load_dataset` for
    directories of data files and hub names."""
    check_kind(kind)
    fmt: Optional[Format] = get_format(format) if format else None
    if fmt is not None and kind is not None and fmt.kind not in ACCEPTS[kind]:
        raise UserError(f"format {fmt.name!r} holds {fmt.kind} data, which cannot be loaded as {kind}")
    raw = read_rows(source, split=split, cache_dir=cache_dir, **load_kwargs)
    if not raw.rows:
        raise DataError(f"{raw.source}: no records found ({raw.blank_lines} blank lines)")

    texts_ok = kind in (None, "prompt")
    if fmt is None:
        values = (_detection_value(r, texts_ok) for r in raw.rows)
        fmt = detect((v for v in values if v is not None), kind)

    records: List = []
    invalid: List[InvalidRecord] = []
    for row in raw.rows:
        try:
            records.append(_parse(row, fmt, kind))
        except FieldError as e:
            if not skip_invalid:
                raise DataFormatError(row.location, str(e)) from None
            invalid.append(InvalidRecord(row.location, str(e)))
    return LoadResult(records, kind or (fmt.kind if fmt else "unknown"),
                      fmt.name if fmt else "unknown", os.fspath(raw.source), invalid, raw.blank_lines)


def _parse(row: RawRow, fmt: Optional[Format], kind: Optional[str]):
    value = row.value
    if row.json_error is not None:
        value = _plain_text(row) if fmt is not None and fmt.kind == "prompt" else None
        if value is None:
            raise FieldError(row.json_error)
    if fmt is None:
        raise FieldError(_undetected(value, kind))
    record = fmt.parse(value)
    if kind is not None and kind != fmt.kind:
        record = convert(record, kind, value, fmt)
    return record


def load_sft(source, **kwargs) -> LoadResult:
    """`load_records(source, kind="sft", ...)`: `SFTRecord`s."""
    return load_records(source, "sft", **kwargs)


def load_preferences(source, **kwargs) -> LoadResult:
    """`load_records(source, kind="preference", ...)`: `PreferenceRecord`s."""
    return load_records(source, "preference", **kwargs)


def load_rankings(source, **kwargs) -> LoadResult:
    """`load_records(source, kind="ranking", ...)`: `RankingRecord`s (pairs become K=2)."""
    return load_records(source, "ranking", **kwargs)


def load_prompts(source, **kwargs) -> LoadResult:
    """`load_records(source, kind="prompt", ...)`: `PromptRecord`s from prompt files or
    the prompts of any labelled data."""
    return load_records(source, "prompt", **kwargs)
