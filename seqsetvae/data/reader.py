"""`ShardReader`: memory-mapped access to one split's shards as `RaggedPatients`.

A shard file is safetensors: an 8-byte header length, a JSON header (dtype, shape, byte
range of each tensor), then the raw little-endian tensors. The reader maps each file
once with `np.memmap` and views the tensors in place, so opening a split reads only the
index; `take` then gathers many patients' events and sets with one fancy-index per
array and shard (no loop over patients or events).

Patient i of the reader is row i of `{split}/index.json`: the split's patients sorted by
(n_events, patient_id).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from seqsetvae.data.ragged import RaggedPatients, exclusive_cumsum, ranges
from seqsetvae.errors import DamagedFile, InputError
from seqsetvae.io import file_sha256, read_json

_DTYPES = {"I32": np.int32, "I64": np.int64, "F32": np.float32, "F64": np.float64, "U8": np.uint8}


def map_safetensors(path: str | Path, written_by: str = "make_shards") -> dict[str, np.ndarray]:
    """Read-only numpy views of every tensor of a safetensors file, memory-mapped.

    The header is checked against the file before any view is made: every tensor's byte
    range lies inside the file and holds exactly its shape, so a truncated, emptied or
    overwritten file is a DamagedFile naming it (and `written_by`, its rule)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, shorter than a safetensors header")
            (header_size,) = struct.unpack("<Q", head)
            if header_size > size - 8:
                raise ValueError(f"its header claims {header_size} bytes, the file has {size}")
            header = json.loads(handle.read(header_size))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        header.pop("__metadata__", None)
        data_start = 8 + header_size
        for name, info in header.items():
            begin, end = info["data_offsets"]
            expected = int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(_DTYPES[info["dtype"]]).itemsize
            if not 0 <= begin <= end <= size - data_start:
                raise ValueError(f"tensor {name!r} runs past the end of the file ({size} bytes)")
            if end - begin != expected:
                raise ValueError(f"tensor {name!r}: {end - begin} bytes for shape {info['shape']}")
    except (OSError, ValueError, KeyError, TypeError) as error:  # ValueError: JSON and UTF-8 too
        raise DamagedFile(path, str(error), written_by) from None
    # a plain ndarray view of the mapping: np.memmap's subclass hooks cost ~2 us per
    # indexing operation, which adds up in `take`
    buffer = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray) if size > data_start else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        raw = buffer[data_start + begin : data_start + end]
        tensors[name] = raw.view(dtype).reshape(info["shape"])
    return tensors


class ShardReader:
    """One split of a shards directory (see docs/design.md, "Shards")."""

    def __init__(self, shards_dir: str | Path, split: str):
        self.shards_dir = Path(shards_dir)
        self.split = split
        index_path = self.shards_dir / split / "index.json"
        if not index_path.is_file():
            raise InputError(f"shards directory {self.shards_dir}: no {split}/index.json")
        index = read_json(index_path, written_by="make_shards")
        top = read_json(self.shards_dir / "index.json", written_by="make_shards")
        self.vocab_size: int = int(top["vocab_size"])
        patients = index["patients"]
        self.patient_ids = np.array(patients["patient_id"], dtype=object)
        self.labels = np.asarray(patients["label"], dtype=np.int64)
        self.n_events = np.asarray(patients["n_events"], dtype=np.int64)
        self.n_sets = np.asarray(patients["n_sets"], dtype=np.int64)
        self.shard = np.asarray(patients["shard"], dtype=np.int64)
        self.row = np.asarray(patients["row"], dtype=np.int64)
        self.shard_entries = index["shards"]
        self.shard_files = [self.shards_dir / split / entry["file"] for entry in self.shard_entries]
        # where each patient's events and sets start inside its shard file: patients
        # fill a shard in row order, so a running sum restarted at each shard
        self.event_start = self._start_in_shard(self.n_events)
        self.set_start = self._start_in_shard(self.n_sets)
        self._tensors: list[dict[str, np.ndarray] | None] = [None] * len(self.shard_files)

    def _start_in_shard(self, sizes: np.ndarray) -> np.ndarray:
        if len(sizes) == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.lexsort((self.row, self.shard))
        running = exclusive_cumsum(sizes[order])[:-1]
        shard = self.shard[order]
        first_of_shard = np.r_[True, shard[1:] != shard[:-1]]
        # running sums only grow, so the latest shard start is a running maximum
        shard_base = np.maximum.accumulate(np.where(first_of_shard, running, 0))
        starts = np.empty(len(sizes), dtype=np.int64)
        starts[order] = running - shard_base
        return starts

    def tensors(self, shard: int) -> dict[str, np.ndarray]:
        if self._tensors[shard] is None:
            path, entry = self.shard_files[shard], self.shard_entries[shard]
            if "sha256" in entry:  # written by the shards stage since sizes and checksums are kept
                size = path.stat().st_size if path.exists() else None
                if size != entry["bytes"]:
                    raise DamagedFile(
                        path, f"{size} bytes where {self.split}/index.json says {entry['bytes']}", "make_shards"
                    )
                if file_sha256(path) != entry["sha256"]:
                    raise DamagedFile(
                        path, f"its sha256 differs from the one {self.split}/index.json recorded", "make_shards"
                    )
            tensors = map_safetensors(path)
            # a whole file of another run (or a stale copy) holds other patients
            mine = self.shard == shard
            expected = {"variable_ids": self.n_events[mine].sum(), "set_times": self.n_sets[mine].sum()}
            for name, count in expected.items():
                if name not in tensors or len(tensors[name]) != count:
                    found = len(tensors[name]) if name in tensors else "no"
                    raise DamagedFile(path, f"{found} {name} where {self.split}/index.json says {count}", "make_shards")
            self._tensors[shard] = tensors
        return self._tensors[shard]

    def __len__(self) -> int:
        return len(self.patient_ids)

    def __getitem__(self, i: int) -> RaggedPatients:
        if not -len(self) <= i < len(self):
            raise IndexError(f"patient {i} out of range for the {len(self)} patients of {self.split}")
        return self.take(np.array([i % len(self)]))

    def take(self, indices) -> RaggedPatients:
        """The patients `indices` (reader positions), in that order.

        Patients are grouped by shard (a stable sort), each shard contributes one
        fancy-index per array, and one more gather restores the requested order.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        shards = self.shard[indices]
        grouped = np.argsort(shards, kind="stable")
        in_order = bool(np.all(grouped == np.arange(len(grouped))))
        picked = indices if in_order else indices[grouped]
        n_events, n_sets = self.n_events[picked], self.n_sets[picked]
        event_bounds, set_bounds = exclusive_cumsum(n_events), exclusive_cumsum(n_sets)
        events = ranges(self.event_start[picked], n_events)
        sets = ranges(self.set_start[picked], n_sets)
        shard_of = shards[grouped]
        starts = np.flatnonzero(np.r_[True, shard_of[1:] != shard_of[:-1]]) if len(picked) else np.zeros(0, np.int64)
        stops = np.r_[starts[1:], len(picked)]
        parts: dict[str, list[np.ndarray]] = {"variable_ids": [], "values": [], "set_times": [], "set_sizes": []}
        for first, stop in zip(starts.tolist(), stops.tolist()):
            tensors = self.tensors(int(shard_of[first]))
            e = events[event_bounds[first] : event_bounds[stop]]
            s = sets[set_bounds[first] : set_bounds[stop]]
            parts["variable_ids"].append(tensors["variable_ids"][e])
            parts["values"].append(tensors["values"][e])
            parts["set_times"].append(tensors["set_times"][s])
            offsets = tensors["set_offsets"]
            parts["set_sizes"].append(offsets[s + 1] - offsets[s])
        empty = {"variable_ids": np.int32, "values": np.float32, "set_times": np.float64, "set_sizes": np.int64}
        flat = {k: np.concatenate(v) if v else np.zeros(0, empty[k]) for k, v in parts.items()}
        if not in_order:  # back from shard-grouped to the requested order
            position = np.empty_like(grouped)
            position[grouped] = np.arange(len(grouped))
            requested_events = ranges(event_bounds[position], n_events[position])
            requested_sets = ranges(set_bounds[position], n_sets[position])
            flat["variable_ids"] = flat["variable_ids"][requested_events]
            flat["values"] = flat["values"][requested_events]
            flat["set_times"] = flat["set_times"][requested_sets]
            flat["set_sizes"] = flat["set_sizes"][requested_sets]
            n_sets = n_sets[position]
        return RaggedPatients(
            patient_ids=self.patient_ids[indices].tolist(),
            labels=self.labels[indices],
            variable_ids=flat["variable_ids"],
            values=flat["values"],
            set_times=flat["set_times"],
            set_offsets=exclusive_cumsum(flat["set_sizes"]),
            patient_offsets=exclusive_cumsum(n_sets),
        )
