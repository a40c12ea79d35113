"""Peak memory of this process: resident set size and, on CUDA, the allocator's peaks."""

from __future__ import annotations

import resource
import sys

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cuda_peaks_mb(device: torch.device) -> tuple[float | None, float | None]:
    """(max allocated, max reserved) in MiB on a CUDA device; (None, None) elsewhere."""
    if device.type != "cuda":
        return None, None
    mib = 1024 * 1024
    return torch.cuda.max_memory_allocated(device) / mib, torch.cuda.max_memory_reserved(device) / mib
