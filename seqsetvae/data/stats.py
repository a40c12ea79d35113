"""`seqsetvae stats`: the vocabulary and the z-normalisation statistics, train split only.

Streams over the validated event partitions one at a time (bounded memory): each
partition gives per-variable count / mean / M2 (sum of squared deviations, two-pass
within the partition), merged across partitions with Chan et al.'s parallel formula in
float64, so neither a large offset nor many partitions cost precision.

Outputs:
    normalization.json  {"split": "train", "ddof": 1,
                         "variables": {name: {"mean", "std", "count"}}}
    vocabulary.json     {"variables": [names sorted, index = vocabulary id]}

`std` is the sample standard deviation (ddof 1); a variable observed once, or with
std 0, gets std 1 so that its z-values are finite (value - mean). `count` is the
variable's train events; events without a value (a null value: MEDS codes) count there
but not in the moments, and a variable with no valued train event gets mean 0, std 1
(its events are z = 0 in the shards either way); `values` counts the valued ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.errors import DamagedFile, InputError
from seqsetvae.io import read_json, write_json
from seqsetvae.settings import load_settings

EVENT_COLUMNS = ("patient_id", "time", "variable", "value", "split")


# ----------------------------------------------------------------------------------
# validated event partitions (written by `ingest`; the format is in docs/design.md)


def partition_paths(events_dir: str | Path) -> list[Path]:
    """The `part-*.arrow` files of a validated events directory, in name order."""
    events_dir = Path(events_dir)
    if not events_dir.is_dir():
        raise InputError(f"validated events directory {events_dir}: not found")
    paths = sorted(events_dir.glob("part-*.arrow"))
    if not paths:
        raise InputError(f"validated events directory {events_dir}: no part-*.arrow files")
    return paths


def read_partition(path: Path, columns: tuple[str, ...] = EVENT_COLUMNS) -> pa.Table:
    """One partition (Arrow IPC file, or stream) with `columns`, memory-mapped."""
    try:
        source = pa.memory_map(str(path))
        try:
            table = pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise DamagedFile(path, f"not an Arrow IPC file: {error}", "ingest") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"validated events file {path}: missing column(s) {', '.join(missing)}")
    for name in columns:
        if name != "value" and table.column(name).null_count:  # a null value: an event without one
            raise InputError(f"validated events file {path}: column {name} has missing values")
    return table.select(list(columns))


def encode(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(int32 codes [N], distinct values) of a string column, codes by first appearance."""
    if isinstance(column, pa.ChunkedArray):
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        column = column.combine_chunks()
    elif pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    encoded = pc.dictionary_encode(column)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, encoded.dictionary


def as_numpy(column: pa.ChunkedArray, dtype) -> np.ndarray:
    return column.to_numpy().astype(dtype, copy=False)


# ----------------------------------------------------------------------------------
# statistics


class Moments:
    """Running per-variable count, mean and M2 (float64), merged with Chan et al.'s
    pairwise formula; variables keyed by name, in first-seen order."""

    def __init__(self):
        self.names: list[str] = []
        self.position: dict[str, int] = {}
        self.events = self.count = self.mean = self.m2 = np.zeros(0)

    def merge(self, names: list[str], events: np.ndarray, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        """`events`: every train event of each variable; `count`, `mean`, `m2`: of its valued ones."""
        at = np.array([self.position.setdefault(name, len(self.position)) for name in names], dtype=np.int64)
        grow = len(self.position) - len(self.names)
        self.names += [name for name in names if self.position[name] >= len(self.names)]
        self.events, self.count, self.mean, self.m2 = (
            np.concatenate([a, np.zeros(grow)]) for a in (self.events, self.count, self.mean, self.m2)
        )
        self.events[at] += events
        n_a, n_b = self.count[at], count
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):  # no valued event on either side: stays 0
            delta = np.where(n_b > 0, mean - self.mean[at], 0.0)
            self.mean[at] += np.where(n > 0, delta * (n_b / n), 0.0)
            self.m2[at] += np.where(n > 0, m2 + delta**2 * (n_a * n_b / n), 0.0)
        self.count[at] = n


def partition_moments(table: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(names, events, count, mean, M2) per variable of one partition's train rows
    (two-pass); count, mean and M2 of the rows with a value."""
    train = pc.equal(table.column("split"), "train").to_numpy(zero_copy_only=False)
    codes, names = encode(table.column("variable"))
    codes = codes[train]
    values = as_numpy(table.column("value"), np.float64)[train]  # null -> NaN
    events = np.bincount(codes, minlength=len(names)).astype(np.float64)
    seen = events > 0  # variables of valid/test rows only are not train variables
    valued = ~np.isnan(values)
    codes, values = codes[valued], values[valued]
    count = np.bincount(codes, minlength=len(names)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.bincount(codes, weights=values, minlength=len(names)) / count, 0.0)
    m2 = np.bincount(codes, weights=(values - mean[codes]) ** 2, minlength=len(names))
    names = [n for n, s in zip(names.to_pylist(), seen.tolist()) if s]
    return names, events[seen], count[seen], mean[seen], m2[seen]


def train_statistics(events_dir: str | Path) -> dict[str, dict]:
    """{name: {mean, std, count}} of every train variable, sorted by name; std with
    ddof 1, and 1 where it is undefined (one observation) or 0."""
    moments = Moments()
    for path in partition_paths(events_dir):
        moments.merge(*partition_moments(read_partition(path, ("variable", "value", "split"))))
    if not moments.names:
        raise InputError(f"validated events directory {events_dir}: the train split has no events")
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(moments.m2 / (moments.count - 1))
    std = np.where((moments.count > 1) & (std > 0) & np.isfinite(std), std, 1.0)
    stats = {
        name: {"mean": float(moments.mean[i]), "std": float(std[i]), "count": int(moments.events[i])}
        | ({"values": int(moments.count[i])} if moments.count[i] != moments.events[i] else {})
        for i, name in enumerate(moments.names)
    }
    return dict(sorted(stats.items()))


def write_statistics(stats: dict[str, dict], stats_path: str | Path, vocab_path: str | Path) -> None:
    write_json(stats_path, {"split": "train", "ddof": 1, "variables": stats})
    write_json(vocab_path, {"variables": list(stats)})


def load_normalization(stats_path: str | Path, vocabulary: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float64 [V] in vocabulary-id order."""
    stats = read_json(stats_path, written_by="stats")["variables"]
    missing = [name for name in vocabulary if name not in stats]
    if missing:
        raise InputError(f"statistics file {stats_path}: no statistics for {', '.join(missing[:10])}")
    mean = np.array([stats[name]["mean"] for name in vocabulary], dtype=np.float64)
    std = np.array([stats[name]["std"] for name in vocabulary], dtype=np.float64)
    return mean, std


def load_vocabulary(vocab_path: str | Path) -> list[str]:
    variables = read_json(vocab_path, written_by="stats")["variables"]
    if not variables or len(set(variables)) != len(variables):
        raise InputError(f"vocabulary file {vocab_path}: empty or has duplicate variables")
    return variables


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae stats", description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="validated events directory (ingest)")
    parser.add_argument("--stats", required=True, help="normalization.json to write")
    parser.add_argument("--vocab", required=True, help="vocabulary.json to write")
    parser.add_argument("--settings", default="{}", help="config sections as JSON")
    args = parser.parse_args(argv)
    load_settings(args.settings)  # validates; the statistics take no options
    stats = train_statistics(args.events)
    write_statistics(stats, args.stats, args.vocab)
    print(f"stats: {len(stats)} train variables, {sum(v['count'] for v in stats.values())} train events")
    return 0
