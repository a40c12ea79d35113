"""Small I/O helpers shared by every stage: atomic outputs, and reading back what an
earlier stage wrote (a damaged file is an error that names it, never a traceback)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from seqsetvae.errors import DamagedFile, InputError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it onto `target` only on success.

    A stage that fails half-way therefore leaves no partial output behind, with or
    without Snakemake around it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    # mkdtemp/mkstemp create private (0700/0600) paths; outputs follow the umask instead
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod((0o777 if directory else 0o666) & ~umask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(tmp, target)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, written_by: str | None = None) -> Any:
    """The JSON document at `path`; a file that is not whole JSON is a DamagedFile naming
    it (and `written_by`, the rule that writes it, when known), not a traceback."""
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as error:  # ValueError: JSON and UTF-8 decoding
        raise DamagedFile(path, f"{type(error).__name__}: {error}", written_by) from None


# the folder of the results layout each rule writes into (workflow/rules/common.smk)
RULE_OF_FOLDER = {
    "events": "ingest",
    "stats": "stats",
    "embedding": "embedding",
    "shards": "make_shards",
    "runs": "train",
    "grid_runs": "train_grid",
    "lr_grid": "choose_lr",
    "eval": "evaluate",
    "baselines": "baseline",
    "memory": "memory",
}


def writer_of(path: str | os.PathLike) -> str | None:
    """The rule that writes `path` in the results layout (its innermost known folder)."""
    for part in reversed(Path(path).parts[:-1]):
        if part in RULE_OF_FOLDER:
            return RULE_OF_FOLDER[part]
    return None


def read_parquet(path: str | os.PathLike, written_by: str | None, columns: list[str] | None = None):
    """The Parquet table at `path` (pyarrow), or a DamagedFile naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as error:
        raise DamagedFile(path, f"{type(error).__name__}: {error}", written_by) from None


def tensors_sha256(tensors: dict) -> str:
    """A checksum of named tensors (numpy or torch alike): names, shapes and raw bytes, in
    name order. Written into a safetensors file's metadata, it lets a reader notice a
    changed byte anywhere in the tensors, which the format itself does not."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        if hasattr(tensor, "detach"):  # torch: any dtype, bf16 included, as raw bytes
            import torch

            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        else:
            raw = np.ascontiguousarray(tensor).reshape(-1).view(np.uint8)
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(raw.tobytes())
    return digest.hexdigest()


def stored_sha256(metadata: dict | None) -> str | None:
    """The checksum a safetensors file's metadata holds: its own key, or inside the
    `training` JSON of weights files (seqsetvae.training.checkpoint.save_weights)."""
    metadata = metadata or {}
    if "sha256" in metadata:
        return metadata["sha256"]
    if "training" in metadata:
        return json.loads(metadata["training"]).get("sha256")
    return None


def load_safetensors(path: str | os.PathLike, written_by: str) -> dict:
    """Every tensor of a safetensors file (torch), read whole and checked against the
    checksum in its metadata when it has one, or a DamagedFile naming it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            expected = stored_sha256(handle.metadata())
    except (OSError, SafetensorError, ValueError) as error:
        raise DamagedFile(path, f"{type(error).__name__}: {error}", written_by) from None
    if expected is not None and tensors_sha256(tensors) != expected:
        raise DamagedFile(path, "its tensors' sha256 differs from the one written with them", written_by)
    return tensors


def require_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Stop before writing `what` into `folder` when its disk has less than `needed_bytes`
    free (a lower bound of what the stage writes): an InputError saying how much is needed."""
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise InputError(
            f"{folder}: {free / 2**20:.1f} MiB free on its disk, but {what} needs at least "
            f"{needed_bytes / 2**20:.1f} MiB; free space there, or set `results:` to a larger disk"
        )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
