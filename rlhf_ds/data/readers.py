"""Read raw rows, each with the place it came from, out of files or datasets.

Sources and how each is read:

- `.jsonl` and JSON-lines `.json`: parsed here, line by line, so that a broken line
  is reported with its own line number (the `datasets` JSON reader fails on the
  whole file instead). Blank lines are skipped and counted.
- `.json` holding one JSON array: parsed here with `JSONDecoder.raw_decode`, which
  gives each element's offset, hence its line. A syntax error inside an array
  cannot be skipped (the rest of the file has no record boundaries), so it is
  always fatal.
- `.txt`: one plain-text prompt per non-blank line.
- `.csv`: parsed here with the `csv` module (header row first). Every cell is the
  text it holds: nothing is type-guessed, so `NA`, `None`, `n/a` stay those words
  and `4`, `007`, `0.50` stay text (fields that must be numbers, like `margin`,
  accept numeric text). An empty cell is a missing field. Rows are located at the
  physical line where they start (a quoted cell may span lines); blank lines are
  skipped and counted.
- `.parquet`: read through `datasets.load_dataset` (typed by its schema); rows are
  numbered from 0.
- a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`:
  `datasets.load_from_disk`; any other directory (data files, no script) and any
  name that is not a local path: `datasets.load_dataset(name, split=split)`, the
  latter from the Hugging Face hub. Rows are numbered from 0.

Every row is a `RawRow`: its `Location`, its value (a dict, a string, or anything
the JSON held) and, for a text line that is not valid JSON, the parse error.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import io
import json
import os
from typing import Any, Callable, List, Optional

from rlhf_ds.data.records import DataFormatError, Location
from rlhf_ds.errors import DataError

JSON_SUFFIXES = (".json", ".jsonl")
FILE_SUFFIXES = (".json", ".jsonl", ".txt", ".csv", ".parquet")


@dataclasses.dataclass
class RawRow:
    location: Location
    value: Any
    json_error: Optional[str] = None   # why the row could not be parsed (a text line that is not JSON, a bad CSV row)


@dataclasses.dataclass
class RawRows:
    source: str
    rows: List[RawRow]
    blank_lines: int = 0


def read_rows(source, split: str = "train", cache_dir: Optional[str] = None,
              **load_kwargs) -> RawRows:
    """All rows of `source` (a path or a hub dataset name), in order."""
    path = os.fspath(source)
    if os.path.isdir(path):
        return _read_dataset_dir(path, split, cache_dir, load_kwargs)
    if os.path.isfile(path):
        suffix = os.path.splitext(path)[1].lower()
        if suffix == ".jsonl":
            return _read_json_lines(path)
        if suffix == ".json":
            return _read_json(path)
        if suffix == ".txt":
            return _read_text_lines(path)
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".parquet":
            return _read_with_datasets(path, "parquet", cache_dir)
        raise DataError(f"{path}: unsupported file type {suffix!r}; "
                        f"expected one of {', '.join(FILE_SUFFIXES)} or a dataset directory")
    if path.lower().endswith(FILE_SUFFIXES) or os.sep in path and not _looks_like_hub_name(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    return _read_hub(path, split, cache_dir, load_kwargs)


def split_names(source, **load_kwargs) -> Optional[List[str]]:
    """The splits `source` offers, in its order; None when it has none (a file, or a directory holding
    one saved `Dataset`). Hub names ask the hub."""
    path = os.fspath(source)
    if os.path.isfile(path):
        return None
    if os.path.isdir(path):
        saved_dict = os.path.join(path, "dataset_dict.json")
        if os.path.isfile(saved_dict):
            with open(saved_dict, encoding="utf-8") as f:
                return list(json.load(f)["splits"])
        if os.path.isfile(os.path.join(path, "state.json")):
            return None
    elif path.lower().endswith(FILE_SUFFIXES) or os.sep in path and not _looks_like_hub_name(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    with _quiet_datasets() as datasets:
        return list(datasets.get_dataset_split_names(path, **load_kwargs))


def _looks_like_hub_name(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything with more slashes is a path.
    return name.count("/") <= 1 and not name.startswith((".", "/"))


# ---------------------------------------------------------------- JSON and text

def _decode_line(raw: bytes, first: bool) -> str:
    # utf-8-sig on the first line drops a byte-order mark written by some editors.
    return raw.decode("utf-8-sig" if first else "utf-8").rstrip("\r\n")


def _json_row(loc: Location, text: str) -> RawRow:
    try:
        return RawRow(loc, json.loads(text))
    except json.JSONDecodeError as e:
        return RawRow(loc, text, f"invalid JSON: {e.msg} (column {e.colno})")


def _read_json_lines(path: str, data: Optional[bytes] = None) -> RawRows:
    return _scan_lines(path, _json_row, data)


def _read_text_lines(path: str) -> RawRows:
    return _scan_lines(path, RawRow)


def _scan_lines(path: str, parse: Callable[[Location, str], RawRow], data: Optional[bytes] = None) -> RawRows:
    """`parse(location, text)` for each non-blank line of `path` (or of `data`, its bytes when already
    read); blank lines are counted. A line that is not UTF-8 is an invalid row with no value, so
    nothing downstream can take it for text."""
    rows, blank = [], 0
    with (io.BytesIO(data) if data is not None else open(path, "rb")) as f:
        for number, raw in enumerate(f, start=1):
            loc = Location(path, number)
            try:
                text = _decode_line(raw, number == 1)
            except UnicodeDecodeError as e:
                rows.append(RawRow(loc, None, f"not valid UTF-8 ({e.reason})"))
                continue
            if not text.strip():
                blank += 1
                continue
            rows.append(parse(loc, text))
    return RawRows(path, rows, blank)


def _read_json(path: str) -> RawRows:
    """A `.json` file: a JSON array of records, or JSON lines under a .json name."""
    with open(path, "rb") as f:
        data = f.read()
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    first = body.lstrip()[:1]
    if first == b"[":
        # An array is one JSON document: it must decode (and parse) whole.
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataFormatError(Location(path, data.count(b"\n", 0, e.start) + 1),
                                  f"not valid UTF-8 ({e.reason})") from None
        return RawRows(path, _parse_json_array(text, len(text) - len(text.lstrip()), path))
    if first == b"{" and b"\n" in body.strip():
        try:
            whole = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            whole = None          # not one object: JSON lines, checked line by line
        if isinstance(whole, dict):
            start = len(body) - len(body.lstrip())
            raise DataFormatError(Location(path, body.count(b"\n", 0, start) + 1),
                                  "the file is a single JSON object (keys: " + ", ".join(map(str, whole))
                                  + "); expected a JSON array of records or one JSON object per line")
    # JSON lines under a .json name: line by line from the bytes already read, so one bad line is
    # one invalid record, as in a .jsonl file.
    return _read_json_lines(path, data)


def _parse_json_array(text: str, pos: int, path: str) -> List[RawRow]:
    # Offsets only grow, so lines are counted incrementally (str.count runs in C).
    seen = {"offset": 0, "line": 1}

    def loc(offset: int) -> Location:
        if offset >= seen["offset"]:
            seen["line"] += text.count("\n", seen["offset"], offset)
            seen["offset"] = offset
            return Location(path, seen["line"])
        return Location(path, text.count("\n", 0, offset) + 1)

    def skip_ws(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    decoder = json.JSONDecoder()
    rows: List[RawRow] = []
    pos = skip_ws(pos + 1)          # past "["
    if text[pos:pos + 1] == "]":
        return rows
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataFormatError(loc(e.pos), f"invalid JSON in array element {len(rows)}: {e.msg}; "
                                  "a broken JSON array cannot be skipped past") from None
        rows.append(RawRow(loc(pos), value))
        pos = skip_ws(end)
        sep = text[pos:pos + 1]
        if sep == ",":
            pos = skip_ws(pos + 1)
        elif sep == "]":
            break
        else:
            raise DataFormatError(loc(pos), "invalid JSON array: expected ',' or ']' after element "
                                  f"{len(rows) - 1}, found {sep or 'end of file'!r}")
    if text[pos + 1:].strip():
        raise DataFormatError(loc(skip_ws(pos + 1)), "extra data after the closing ']' of the JSON array")
    return rows


# ------------------------------------------------------------------ CSV

@contextlib.contextmanager
def _csv_field_limit():
    """No cap on a CSV cell's size while reading (the csv module's default, 128 KiB, would reject a long
    response), restored afterwards: the limit is the module's global state."""
    was = csv.field_size_limit()
    csv.field_size_limit(2 ** 31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(was)


def _read_csv(path: str) -> RawRows:
    """A CSV file with a header row. Every cell is the text it holds ("NA", "None", "007", "0.50" stay
    those strings: no type is guessed); an empty cell is a missing field. Each row is located at the
    physical line where it starts (a quoted cell may span lines); blank lines are skipped and counted.
    A row with more cells than the header names is an invalid row."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(Location(path, data.count(b"\n", 0, e.start) + 1),
                              f"not valid UTF-8 ({e.reason})") from None
    header: Optional[List[str]] = None
    rows, blank, previous_end = [], 0, 0
    reader = csv.reader(io.StringIO(text, newline=""))
    with _csv_field_limit():
        try:
            for cells in reader:
                loc, previous_end = Location(path, previous_end + 1), reader.line_num
                if not cells:
                    blank += 1
                elif header is None:
                    header = _csv_header(cells, loc)
                elif len(cells) > len(header):
                    rows.append(RawRow(loc, None, f"{len(cells)} cells, but the header names {len(header)} "
                                                  f"columns"))
                else:           # missing trailing cells are empty ones
                    cells += [""] * (len(header) - len(cells))
                    rows.append(RawRow(loc, {k: v if v else None for k, v in zip(header, cells)}))
        except csv.Error as e:
            raise DataFormatError(Location(path, reader.line_num), f"invalid CSV: {e}") from None
    return RawRows(path, rows, blank)


def _csv_header(cells: List[str], loc: Location) -> List[str]:
    # An unnamed column (e.g. a pandas index) is named as pandas names it.
    names = [c if c else f"Unnamed: {i}" for i, c in enumerate(cells)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataFormatError(loc, f"the CSV header names column {twice[0]!r} more than once")
    return names


# --------------------------------------------------------- through `datasets`

@contextlib.contextmanager
def _quiet_datasets():
    """Silence `datasets` progress bars for a small local load, restoring the setting."""
    import datasets
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _rows_of(dataset, source: str) -> List[RawRow]:
    return [RawRow(Location(source, i, "row"), row) for i, row in enumerate(dataset)]


def _read_with_datasets(path: str, builder: str, cache_dir: Optional[str]) -> RawRows:
    with _quiet_datasets() as datasets:
        ds = datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir)
    return RawRows(path, _rows_of(ds, path))


def _read_dataset_dir(path: str, split: str, cache_dir, load_kwargs) -> RawRows:
    saved = any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))
    with _quiet_datasets() as datasets:
        if saved:
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{path}: no split {split!r}; splits: {', '.join(ds)}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(path, split=split, cache_dir=cache_dir, **load_kwargs)
    return RawRows(path, _rows_of(ds, path))


def _read_hub(name: str, split: str, cache_dir, load_kwargs) -> RawRows:
    with _quiet_datasets() as datasets:
        ds = datasets.load_dataset(name, split=split, cache_dir=cache_dir, **load_kwargs)
    return RawRows(name, _rows_of(ds, name))
