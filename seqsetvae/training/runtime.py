"""Where and how a training or evaluation job runs: device, CPU threads, seeds, precision,
and the frozen embedding both rebuild the model from."""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from seqsetvae.errors import InputError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("configuration key train.device: cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_threads(configured: int | None, given: int | None) -> int:
    """train.threads, else the job's --threads, capped at the CPUs this process may use."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(configured or given or available, available))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(precision: str, device: torch.device):
    """A factory of the forward pass's precision context: bf16 autocast, or none for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def load_embedding(path: Path) -> torch.Tensor:
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises several types for a bad file
        raise InputError(f"{path}: not a readable safetensors file ({error})") from error
    if "embedding" not in tensors or tensors["embedding"].ndim != 2:
        raise InputError(f"{path}: expected a 2-D tensor named 'embedding', found {sorted(tensors)}")
    return tensors["embedding"].float()
