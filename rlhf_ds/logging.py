"""Run output: metrics.jsonl, TensorBoard events, progress bars, phase timers, plots.

Only rank 0 writes. `metrics.jsonl` is appended and flushed line by line, so a crash
loses nothing already logged; on resume, lines past the resumed step are dropped first
so the file reads as one continuous run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterable, List, Optional

from .files import write_text_atomic

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a record is emitted (so redirection and test capture work)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def get_logger(level: str = "info", rank: int = 0) -> logging.Logger:
    """The `rlhf_ds` logger: messages from rank 0 at `level`, from other ranks only warnings."""
    log = logging.getLogger("rlhf_ds")
    if not log.handlers:
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("[%(asctime)s rlhf_ds] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(_LEVELS.get(level, logging.INFO) if rank == 0 else logging.WARNING)
    return log


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """One JSON object per logged step in `logs/metrics.jsonl`, mirrored to TensorBoard."""

    def __init__(self, log_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.log_dir = log_dir
        self.path = os.path.join(log_dir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(log_dir, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(log_dir=os.path.join(log_dir, "tensorboard"))
            except Exception as e:  # tensorboard is optional at run time; the jsonl is not
                get_logger().warning(f"TensorBoard disabled: {e}")

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop lines of `stage` logged after `step` (a resumed run logs them again)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        records = [json.loads(line) for line in lines]
        ours = (stage, f"{stage}/samples")
        kept = [line for line, r in zip(lines, records) if not (r.get("stage") in ours and r.get("step", 0) > step)]
        write_text_atomic(self.path, "".join(kept))

    def log(self, stage: str, step: int, metrics: Dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"stage": stage, "step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self._tb.add_scalar(f"{stage}/{k}", v, step)
            self._tb.flush()

    def log_samples(self, stage: str, step: int, samples: List[Dict]) -> None:
        """A few completions as text: one `<stage>/samples` line in metrics.jsonl (kept apart from the
        stage's figures, so that readers of `<stage>` lines see numbers only) and a markdown table
        in TensorBoard's text tab."""
        if not self.enabled or not samples:
            return
        record = {"stage": f"{stage}/samples", "step": int(step), "time": round(time.time(), 3),
                  "samples": [{k: _plain(v) for k, v in s.items()} for s in samples]}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            self._tb.add_text(f"{stage}/samples", samples_markdown(samples), step)
            self._tb.flush()

    def read(self, stage: Optional[str] = None) -> List[Dict]:
        if not os.path.exists(self.path):
            return []
        rows = [json.loads(line) for line in open(self.path, encoding="utf-8") if line.strip()]
        return [r for r in rows if stage is None or r.get("stage") == stage]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def samples_markdown(samples: List[Dict]) -> str:
    """A markdown table of sample dicts (columns: the keys of the first), cells made one-line."""
    cols = list(samples[0])

    def cell(v) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(s.get(c, "")) for c in cols) + " |" for s in samples]
    return "\n".join(lines)


class PhaseTimer:
    """Wall time per named phase (generation, experience, training, ...), summed until reset."""

    def __init__(self):
        self.totals: Dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def pop(self) -> Dict[str, float]:
        out, self.totals = self.totals, {}
        return out


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
             enabled: bool = True, initial: int = 0):
    """A tqdm bar on rank 0 (a silent iterator elsewhere, or when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, initial=initial, dynamic_ncols=True,
                leave=False, file=sys.stdout)


def write_plots(metrics_path: str, out_dir: str, series: Dict[str, List[str]]) -> List[str]:
    """PNG curves of logged metrics: `series` maps a stage to the keys to draw. Returns files written."""
    if not os.path.exists(metrics_path):
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_path, encoding="utf-8") if line.strip()]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for stage, keys in series.items():
        stage_rows = [r for r in rows if r.get("stage") == stage]
        present = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in stage_rows)]
        if not present:
            continue
        fig, axes = plt.subplots(len(present), 1, figsize=(7, 2.2 * len(present)), sharex=True, squeeze=False)
        for ax, key in zip(axes[:, 0], present):
            pts = [(r["step"], r[key]) for r in stage_rows if isinstance(r.get(key), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
            ax.set_ylabel(key, fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.suptitle(stage)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stage}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
