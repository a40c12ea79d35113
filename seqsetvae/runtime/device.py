"""Where and how a training or evaluation job runs: device, CPU threads, seeds, precision,
and the frozen embedding both rebuild the model from."""

from __future__ import annotations

import os
import platform
import random
import socket
import subprocess
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from seqsetvae.errors import InputError
from seqsetvae.io import load_safetensors


def resolve_device(name: str, gpus: int = 0, cpu_fallback: bool = False) -> torch.device:
    """`train.device` as a torch device. Fails at once when CUDA is asked for and none is
    visible: by `cuda`, or by a job given `gpus` GPUs (unless `cpu_fallback`, for test
    clusters whose GPUs are stand-ins); `auto` without a GPU request takes the CPU."""
    if not torch.cuda.is_available() and (name == "cuda" or (gpus > 0 and not cpu_fallback)):
        asked = "train.device is cuda" if name == "cuda" else f"this job was given {gpus} GPU(s) (resources.*.gpus)"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise InputError(
            f"configuration key train.device: {asked} but no CUDA device is visible "
            f"(CUDA_VISIBLE_DEVICES={visible!r}, torch {torch.__version__} built for CUDA {torch.version.cuda})"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        # TF32 tensor cores for fp32 matmuls and convolutions (10-bit mantissa products,
        # fp32 accumulation): several times the fp32 rate, and well inside the noise of
        # SGD; CPU results are untouched
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_driver_version() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.split()
    return lines[0] if done.returncode == 0 and lines else None


def machine(device: torch.device) -> dict:
    """Where a job ran, so that runs spread over a mixed partition compare honestly."""
    cuda = device.type == "cuda"
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda": torch.version.cuda if cuda else None,
        "driver": gpu_driver_version() if cuda else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


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


def compiled_step(setting: str | bool, device: torch.device) -> str | None:
    """`train.compile` resolved: None (eager), or the torch.compile mode of the step.
    On CUDA "reduce-overhead": CUDA graphs, meant to skip the per-kernel launch cost of a
    step of ~1,500 small kernels. On a CPU the default mode: `auto` leaves it off there,
    where compiling costs minutes for a step at most ~1.15x faster. The schema's default is
    off on both: on an H200 the eager step of config.yaml's model was the faster one from
    batch size 16 up (docs/performance.md)."""
    on = device.type == "cuda" if setting == "auto" else bool(setting)
    if not on:
        return None
    return "reduce-overhead" if device.type == "cuda" else "default"


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process (a count above the warm-up's is a
    recompilation)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def load_embedding(path: Path) -> torch.Tensor:
    tensors = load_safetensors(path, written_by="embedding")
    if "embedding" not in tensors or tensors["embedding"].ndim != 2:
        raise InputError(f"{path}: expected a 2-D tensor named 'embedding', found {sorted(tensors)}")
    return tensors["embedding"].float()
