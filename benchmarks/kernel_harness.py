"""Timing, memory and reporting helpers shared by the kernel benchmarks.

How each figure is measured:

* CUDA time: `triton.testing.do_bench` (it flushes L2 between runs), median and the
  20th / 80th percentiles in ms.
* CUDA memory: `torch.cuda.max_memory_allocated()` during one call, minus what was
  allocated before it (the inputs): the peak *above inputs*, outputs and gradients
  included.
* CPU time: torch runs with RLHF_BENCH_THREADS intra-op threads (default 1; CPU
  benchmarks are for ratios). With one thread the clock is the calling thread's CPU
  time (`time.thread_time`, user + system, so page faults count), which other
  processes sharing the cores barely disturb; with more, wall time. Median and 20 / 80
  percentiles after one warm-up call, with more repetitions for fast calls.
* CPU memory: every allocation and free that torch's CPU allocator makes during one
  call, recorded by `torch.profiler` (profile_memory=True); the peak of the running
  sum is the peak above inputs. It counts torch tensors only (not Python objects,
  not allocator slack), which is exactly the N x V temporaries in question.
* Bandwidth: bytes the op must move at minimum (inputs read once, outputs written
  once) / median time, and its share of the device's peak DRAM bandwidth (a table of
  known devices, else 2 x memory clock x bus width from the device properties).
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Peak DRAM bandwidth in GB/s from the vendors' data sheets; the first match by
# substring of torch.cuda.get_device_name() wins (so more specific names come first).
KNOWN_BANDWIDTH_GBS = [
    ("GH200", 4000.0), ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2039.0), ("H100", 3352.0),
    ("H800", 3352.0), ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
    ("L40S", 864.0), ("L40", 864.0), ("L4", 300.0), ("A10G", 600.0), ("A10", 600.0),
    ("RTX 4090", 1008.0), ("RTX 3090", 936.0), ("V100", 900.0), ("MI300X", 5300.0),
]


# ----------------------------------------------------------------------------- device
def device_bandwidth_gbs(device: int = 0) -> Optional[float]:
    name = torch.cuda.get_device_name(device)
    for key, gbs in KNOWN_BANDWIDTH_GBS:
        if key in name:
            return gbs
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate
    return None


def device_label() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


@contextlib.contextmanager
def cpu_threads():
    """Run with RLHF_BENCH_THREADS (default 1) torch intra-op threads, then restore."""
    wanted = int(os.environ.get("RLHF_BENCH_THREADS", "1"))
    before = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- timing
def _quantile(xs: Sequence[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _clear_grads(tensors: Optional[List[torch.Tensor]]) -> None:
    for t in tensors or ():
        t.grad = None


def cpu_clock() -> Callable[[], float]:
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def time_cpu(fn: Callable[[], object], reps: int = 5, warmup: int = 1,
             grad_to_none: Optional[List[torch.Tensor]] = None) -> Dict[str, float]:
    for _ in range(warmup):
        _clear_grads(grad_to_none)
        fn()
    clock = cpu_clock()
    t0 = clock()
    _clear_grads(grad_to_none)
    fn()
    estimate = clock() - t0
    # fast calls get more repetitions (up to ~0.5 s of them): a shared machine's hiccups
    # then move the median less
    reps = max(reps, min(50, int(0.5 / max(estimate, 1e-6))))
    times = []
    for _ in range(max(reps, 1)):
        _clear_grads(grad_to_none)
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return {"ms": statistics.median(times), "ms_p20": _quantile(times, 0.2), "ms_p80": _quantile(times, 0.8)}


def time_cuda(fn: Callable[[], object], grad_to_none: Optional[List[torch.Tensor]] = None) -> Dict[str, float]:
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
    return {"ms": med, "ms_p20": p20, "ms_p80": p80}


# ----------------------------------------------------------------------------- memory
def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of torch CPU allocations made (and not yet freed) during one call."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        if str(e.device_type()) != "DeviceType.CPU":
            continue
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def peak_cuda_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated on the GPU during one call, above what was allocated before it."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


# ----------------------------------------------------------------------------- providers
def optional_liger():
    """The Liger-Kernel module when installed (import guarded), else None."""
    try:
        import liger_kernel.transformers.functional as liger  # noqa: F401
        return liger
    except Exception:
        return None


def try_compile(fn: Callable, **kwargs) -> Optional[Callable]:
    try:
        return torch.compile(fn, **kwargs)
    except Exception:  # pragma: no cover - e.g. no compiler toolchain
        return None


def measure(fn: Callable[[], object], on_cuda: bool, reps: int = 5,
            grad_to_none: Optional[List[torch.Tensor]] = None) -> Dict[str, object]:
    """Time and peak memory of one provider; an out-of-memory or a failure is recorded, not raised.

    `grad_to_none`: tensors whose .grad is reset before every call (and before the memory
    measurement, so that freeing an old gradient does not hide a new allocation).
    """
    try:
        if on_cuda:
            row = dict(time_cuda(fn, grad_to_none))
        else:
            row = dict(time_cpu(fn, reps=reps, grad_to_none=grad_to_none))
        _clear_grads(grad_to_none)
        row["peak_mb"] = (peak_cuda_bytes(fn) if on_cuda else peak_cpu_bytes(fn)) / 2**20
        _clear_grads(grad_to_none)
        row["status"] = "ok"
    except torch.cuda.OutOfMemoryError:
        row = {"status": "OOM"}
    except Exception as exc:  # a provider that cannot run here (an API change in an optional package)
        row = {"status": f"error: {type(exc).__name__}: {str(exc)[:200]}"}
    finally:
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
    return row


def add_ratios(rows: List[Dict[str, object]], group_keys: Iterable[str], baseline: str = "eager",
               ours: str = "ours") -> None:
    """For each group (same shape and pass), ours' speed-up and memory ratio to every other provider."""
    groups: Dict[tuple, Dict[str, Dict[str, object]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in group_keys), {})[r["provider"]] = r
    for by_provider in groups.values():
        mine = by_provider.get(ours)
        if not mine or mine.get("status") != "ok":
            continue
        for name, other in by_provider.items():
            if name == ours or other.get("status") != "ok":
                continue
            mine[f"speedup_vs_{name}"] = other["ms"] / mine["ms"]
            if other.get("peak_mb"):
                mine[f"mem_ratio_vs_{name}"] = mine["peak_mb"] / other["peak_mb"]


# ----------------------------------------------------------------------------- reporting
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_table(rows: List[Dict[str, object]], columns: Sequence[str]) -> str:
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def write_results(kernel: str, rows: List[Dict[str, object]], columns: Sequence[str],
                  targets: Optional[List[Dict[str, object]]] = None, notes: str = "") -> Path:
    """Print the table (and the targets) and write benchmarks/results/<kernel>_<device>.json."""
    on_cuda = torch.cuda.is_available()
    label = device_label()
    slug = "cuda" if on_cuda else "cpu"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{kernel}_{slug}.json"
    meta = {
        "kernel": kernel, "device": label, "torch": torch.__version__,
        "triton": _triton_version(), "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_threads": torch.get_num_threads(), "notes": notes,
        "cpu_clock": None if on_cuda else cpu_clock().__name__,
    }
    if on_cuda:
        meta["peak_bandwidth_gbs"] = device_bandwidth_gbs()
    path.write_text(json.dumps({"meta": meta, "rows": rows, "targets": targets or []}, indent=1, default=str))
    print(f"\n== {kernel} on {label} ==")
    print(format_table(rows, columns))
    for t in targets or []:
        print(f"  target {t['target']}: {_fmt(t['value'])} -> {'met' if t['met'] else 'NOT met'}"
              + (f" ({t['where']})" if t.get("where") else ""))
    print(f"  written: {path}")
    return path


def _triton_version() -> Optional[str]:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def check_rows_produced(rows: List[Dict[str, object]], providers: Iterable[str], allow_oom: Iterable[str] = ()):
    """Every required provider produced a finite time and memory figure (OOM allowed for some)."""
    allow_oom = set(allow_oom)
    for r in rows:
        if r["provider"] not in providers:
            continue
        if r.get("status") == "OOM" and r["provider"] in allow_oom:
            continue
        assert r.get("status") == "ok", r
        assert math.isfinite(r["ms"]) and r["ms"] > 0, r
        assert math.isfinite(r["peak_mb"]) and r["peak_mb"] >= 0, r
