"""Loading a stage's data: records from files, a held-out split, tokenized datasets, reports."""
from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import torch

from ..data.load import load_records


def _format_arg(fmt: Optional[str]) -> Optional[str]:
    return None if fmt in (None, "", "auto") else fmt


def load_stage_records(path: str, kind: str, fmt: Optional[str], skip_invalid: bool, log: logging.Logger,
                       what: str):
    """Records of `kind` from `path`; invalid records stop the run unless `skip_invalid`, in which case
    they are counted and reported."""
    result = load_records(path, kind=kind, format=_format_arg(fmt), skip_invalid=skip_invalid)
    msg = f"{what}: {len(result.records)} records from {result.source} (format {result.format}"
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
        raise ValueError(f"cannot hold out {n_eval} of {n} records for evaluation; lower data.eval_fraction "
                         f"or give an eval_path")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def train_eval_records(data_path: str, eval_path: Optional[str], kind: str, fmt: Optional[str],
                       skip_invalid: bool, eval_fraction: float, seed: int, log: logging.Logger, what: str):
    train = load_stage_records(data_path, kind, fmt, skip_invalid, log, what)
    if eval_path:
        return train, load_stage_records(eval_path, kind, fmt, skip_invalid, log, f"{what} eval")
    return split_records(train, eval_fraction, seed)


def report_truncation(dataset, log: logging.Logger, what: str) -> None:
    stats = getattr(dataset, "stats", None)
    if stats is not None and getattr(stats, "truncated", 0):
        log.warning(f"{what}: {stats.summary()}")
