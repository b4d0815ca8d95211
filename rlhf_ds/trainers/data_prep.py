"""Loading a stage's data: records from files, a held-out split, tokenized datasets, reports."""
from __future__ import annotations

import logging
import os
import re
from typing import List, Optional, Tuple

import torch

from ..config_schema import ConfigError
from ..errors import DataError
from ..data.load import load_records
from ..data.readers import split_names


def _format_arg(fmt: Optional[str]) -> Optional[str]:
    return None if fmt in (None, "", "auto") else fmt


# A held-out set named without a split takes the first of these its dataset has.
HELD_OUT_SPLITS = ("test", "validation")
TRAIN_SPLIT = "train"


# name:split, the split optionally sliced as `datasets` allows (test[:10%]).
_NAME_SPLIT = re.compile(r"^(.+):([^/\\:\[\]]+(?:\[[^\]]*\])?)$")


def parse_source(spec: str) -> Tuple[str, Optional[str]]:
    """`name:split` -> (name, split); anything else, and any path that exists as written, -> (spec, None)."""
    match = None if os.path.exists(spec) else _NAME_SPLIT.match(spec)
    return (match.group(1), match.group(2)) if match else (spec, None)


def _same_source(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) if os.path.exists(a) else a == b


def resolve_split(spec: str, held_out: bool, log: logging.Logger, what: str,
                  train_spec: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """(source, split) for a stage's data `spec`; split None when the source has no splits (a file).

    A split named in `spec` (`name:split`) must exist. Unnamed: training data takes `train`; a held-out
    set (`held_out`) takes its test split, else its validation split, else its only split, which is
    refused when it is the training data (`train_spec`). A held-out set's split is logged, as a warning
    when it is a train split."""
    source, split = parse_source(spec)
    splits = split_names(source)
    if splits is None:
        if split is not None:
            raise ConfigError(f"{what}: {source} is a single file or dataset with no splits; drop ':{split}'")
        return source, None
    train_source, train_split = parse_source(train_spec) if train_spec else (None, None)
    # The split the model trains on, when this is the training data's dataset.
    trained_split = (train_split or TRAIN_SPLIT) if train_source and _same_source(source, train_source) else None
    listed = ", ".join(splits)
    if split is not None:
        if split.split("[", 1)[0] not in splits:        # datasets' slice syntax, e.g. test[:10%]
            raise ConfigError(f"{what}: {source} has no split {split!r}; its splits: {listed}")
    elif not held_out:
        if TRAIN_SPLIT not in splits:
            raise ConfigError(f"{what}: {source} has no {TRAIN_SPLIT!r} split; name one as {source}:SPLIT "
                              f"(its splits: {listed})")
        split = TRAIN_SPLIT
    else:
        split = next((s for s in HELD_OUT_SPLITS if s in splits), splits[0] if len(splits) == 1 else None)
        if split is None:
            raise ConfigError(f"{what}: {source} has no {' or '.join(HELD_OUT_SPLITS)} split; name the one to "
                              f"evaluate on as {source}:SPLIT (its splits: {listed})")
        if split == trained_split:
            raise ConfigError(f"{what}: {source} has only the {split!r} split, which is the training data; "
                              f"name another dataset or split, or leave the eval path unset to hold out "
                              f"data.eval_fraction of the training data")
    if held_out:
        if split.split("[", 1)[0] == TRAIN_SPLIT or split == trained_split:
            log.warning(f"{what}: evaluating on split {split!r} of {source} (its splits: {listed}), a training "
                        f"split: the evaluation does not measure held-out data")
        else:
            log.info(f"{what}: evaluating on split {split!r} of {source} (its splits: {listed})")
    return source, split


def load_stage_records(path: str, kind: str, fmt: Optional[str], skip_invalid: bool, log: logging.Logger,
                       what: str, held_out: bool = False, train_path: Optional[str] = None):
    """Records of `kind` from `path` (a file, a dataset directory or hub id, `name:split` for a split; see
    `resolve_split` for the default split: `held_out` for evaluation data, with `train_path` the training
    data it must not be); invalid records stop the run unless `skip_invalid`, in which case they are
    counted and reported."""
    source, split = resolve_split(path, held_out, log, what, train_path)
    result = load_records(source, kind=kind, format=_format_arg(fmt), skip_invalid=skip_invalid,
                          split=split or TRAIN_SPLIT)
    msg = f"{what}: {len(result.records)} records from {result.source}"
    msg += f" split {split!r} (format {result.format}" if split else f" (format {result.format}"
    if result.blank_lines:
        msg += f", {result.blank_lines} blank lines skipped"
    if result.invalid:
        msg += f", {len(result.invalid)} invalid skipped; first: {result.invalid[0]}"
    log.info(msg + ")")
    return result.records


def split_records(records: List, eval_fraction: float, seed: int, min_eval: int = 1) -> Tuple[List, List]:
    """Deterministic held-out split: the same records go to evaluation on every rank and every run."""
    n = len(records)
    n_eval = max(min_eval, int(round(n * eval_fraction))) if eval_fraction > 0 else 0
    if n_eval >= n:
        raise DataError(f"cannot hold out {n_eval} of {n} records for evaluation; lower data.eval_fraction "
                        f"or give an eval_path")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def train_eval_records(data_path: str, eval_path: Optional[str], kind: str, fmt: Optional[str],
                       skip_invalid: bool, eval_fraction: float, seed: int, log: logging.Logger, what: str):
    train = load_stage_records(data_path, kind, fmt, skip_invalid, log, what)
    if eval_path:
        return train, load_stage_records(eval_path, kind, fmt, skip_invalid, log, f"{what} eval", held_out=True,
                                         train_path=data_path)
    return split_records(train, eval_fraction, seed)


def report_truncation(dataset, log: logging.Logger, what: str) -> None:
    stats = getattr(dataset, "stats", None)
    if stats is not None and getattr(stats, "truncated", 0):
        log.warning(f"{what}: {stats.summary()}")
