"""The peak memory of this process so far, for the run summary (`peak_memory_gib`, the maximum over ranks).

On CUDA: the most device memory torch's allocator has held (`max_memory_allocated`). On CPU: the peak
resident set of the process (`ru_maxrss`), which counts everything the rank holds (Python, libraries,
models, optimizer states, activations), so it is what a machine must have per rank, not what the
models alone take.
"""
from __future__ import annotations

import resource
import sys

import torch

GiB = 1024 ** 3


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)     # bytes on macOS, KiB on Linux
