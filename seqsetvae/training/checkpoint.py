"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory `checkpoints/step-NNNNNNNN/` holding

    model.safetensors   the model's state_dict
    state.safetensors   every other tensor (optimizer moments, RNG states), by path
    state.json          the rest: step, sampler, scheduler, counters, RNG scalars, with
                        {"__tensor__": key} where a tensor was taken out

and `checkpoints/latest.json` names the newest one. Each is written through
`atomic_path`, and `latest.json` is replaced only after its directory is complete, so
a job killed at any moment resumes from a whole checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from seqsetvae.io import atomic_path, file_sha256, load_safetensors, read_json, tensors_sha256, write_json
from seqsetvae.runtime.weights import model_tensors

KEEP = 2  # checkpoints kept on disk (the newest ones)

# train keys that do not change what is computed: a checkpoint written under other
# values of these is resumed all the same (the run's own seed is part of the identity)
# (devices: in the identity as the world size, when above 1)
NOT_IN_FINGERPRINT = {
    "batch_sizes",
    "seeds",
    "threads",
    "log_every",
    "checkpoint_every",
    "max_skipped_batches",
    "cpu_fallback",
    "devices",
    "loader_workers",
    "stop_signals",
    "tracking",
    "lr_grid",
    "lr_grid_seeds",
    "lr_grid_epochs",
}
# the budget: a checkpoint of the same identity under another budget is continued
BUDGET = ("epochs",)


# -- nested state <-> (JSON, tensors) ---------------------------------------------------


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """`obj` with each tensor / numpy array replaced by a reference into `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):  # small arrays only (numpy's RNG key)
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"cannot store dict keys of {path!r} in JSON")
        # int keys (optimizer state) survive as {"__int_keys__": ...}
        body = {str(k): split_tensors(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        if any(isinstance(k, int) for k in obj):
            return {"__int_keys__": body}
        return body
    if isinstance(obj, (list, tuple)):
        items = [split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a checkpoint")


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        if "__tuple__" in obj:
            return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
        if "__int_keys__" in obj:
            return {int(k): join_tensors(v, tensors) for k, v in obj["__int_keys__"].items()}
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


# -- RNG states -----------------------------------------------------------------------


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(legacy=False), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# -- whole checkpoints ----------------------------------------------------------------


def save_checkpoint(directory: str | Path, step: int, model: torch.nn.Module, state: dict) -> Path:
    """Write checkpoint `step` under `directory`, point latest.json at it, prune old ones."""
    directory = Path(directory)
    name = f"step-{step:08d}"
    with atomic_path(directory / name, directory=True) as tmp:
        weights = model_tensors(model)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"sha256": tensors_sha256(weights)})
        tensors: dict[str, torch.Tensor] = {}
        body = split_tensors(state, tensors)
        save_file(tensors, str(tmp / "state.safetensors"), metadata={"sha256": tensors_sha256(tensors)})
        (tmp / "state.json").write_text(json.dumps(body, allow_nan=True) + "\n")
    write_json(directory / "latest.json", {"checkpoint": name, "step": step})
    prune(directory, KEEP)
    return directory / name


def prune(directory: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints (never the one latest.json names)."""
    latest = latest_checkpoint(directory)
    old = sorted(p for p in Path(directory).glob("step-*") if p.is_dir() and p != latest)
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(directory: str | Path) -> Path | None:
    pointer = Path(directory) / "latest.json"
    if not pointer.exists():
        return None
    path = Path(directory) / read_json(pointer)["checkpoint"]
    return path if (path / "state.json").exists() else None


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict:
    """Load the weights into `model`; return the rest of the state (tensors restored)."""
    weights, state = read_checkpoint(path)
    model.load_state_dict(weights, strict=True)
    return state


class DamagedCheckpoint(Exception):
    """A checkpoint directory with a missing, truncated or unreadable file."""


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(model weights, the rest of the state) of checkpoint `path`, every file read whole;
    DamagedCheckpoint names the file that is not."""
    path = Path(path)
    try:
        body = json.loads((path / "state.json").read_text())
        weights = load_safetensors(path / "model.safetensors", written_by="train")
        tensors = load_safetensors(path / "state.safetensors", written_by="train")
        return weights, join_tensors(body, tensors)
    except Exception as error:  # JSON, OS and safetensors errors alike: the file cannot be used
        raise DamagedCheckpoint(f"{path}: {type(error).__name__}: {error}") from None


def checkpoints_newest_first(directory: str | Path) -> list[Path]:
    """The checkpoint directories under `directory`: the one latest.json names first,
    then the others from the newest step down."""
    directory = Path(directory)
    steps = sorted((p for p in directory.glob("step-*") if p.is_dir()), reverse=True)
    latest = latest_checkpoint(directory)
    return ([latest] if latest is not None else []) + [p for p in steps if p != latest]


# -- which run a checkpoint belongs to -----------------------------------------------


def run_identity(
    settings: dict,
    batch_size: int,
    seed: int,
    shards: Path,
    embedding: Path,
    device: torch.device,
    world_size: int = 1,
    init_weights: Path | None = None,
) -> str:
    """What a checkpoint must match to be continued: model, optimiser and schedule settings,
    batch size, seed, data, the pretrained weights it started from, device and world size;
    not the budget (`BUDGET`)."""
    train = {k: v for k, v in settings["train"].items() if k not in NOT_IN_FINGERPRINT and k not in BUDGET}
    index = shards / "index.json"
    payload = {
        "model": settings["model"],
        "train": train,
        "batch_size": batch_size,
        "seed": seed,
        "shards_index": file_sha256(index) if index.exists() else None,
        "embedding": file_sha256(embedding),
        "device": device.type,
    }
    if world_size > 1:  # absent for one process, so that the runs of earlier versions resume
        payload["world_size"] = world_size
    if init_weights is not None:  # likewise absent without pretraining
        payload["init_weights"] = file_sha256(init_weights)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
