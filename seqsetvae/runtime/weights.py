"""Weights files: a model's state_dict as safetensors with a checksum of its tensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from seqsetvae.io import atomic_path, load_safetensors, tensors_sha256


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict as contiguous CPU tensors (safetensors wants no sharing)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict | None = None) -> None:
    """Weights as safetensors; `metadata` goes into one JSON string under "training".

    One key only: safetensors writes several metadata keys in hash order, which would
    make the bytes of identical weights differ from run to run.
    """
    save_tensors(model.state_dict(), path, metadata)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Tensors as safetensors, written atomically, with `metadata` and their checksum as
    save_weights writes them."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    with atomic_path(path) as tmp:
        meta = {"training": json.dumps({**(metadata or {}), "sha256": tensors_sha256(tensors)}, sort_keys=True)}
        save_file(tensors, str(tmp), metadata=meta)


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    model.load_state_dict(load_safetensors(path, written_by="train"), strict=True)
