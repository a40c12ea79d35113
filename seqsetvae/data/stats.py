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
std 0, gets std 1 so that its z-values are finite (value - mean).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.errors import InputError
from seqsetvae.io import read_json, write_json
from seqsetvae.settings import load_settings

EVENT_COLUMNS = ("patient_id", "time", "variable", "value", "split")
SPLITS = ("train", "valid", "test")


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
        raise InputError(f"validated events file {path}: not an Arrow IPC file ({error})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"validated events file {path}: missing column(s) {', '.join(missing)}")
    for name in columns:
        if table.column(name).null_count:
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
    encoded = pc.dictionary_encode(column)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, encoded.dictionary


def as_numpy(column: pa.ChunkedArray, dtype) -> np.ndarray:
    return column.to_numpy().astype(dtype, copy=False)


# ----------------------------------------------------------------------------------
# statistics


def partition_moments(table: pa.Table) -> pd.DataFrame:
    """Per variable of one partition's train rows: count, mean, M2 (index: name)."""
    train = table.filter(pc.equal(table.column("split"), "train"))
    if train.num_rows == 0:
        return pd.DataFrame({"count": [], "mean": [], "m2": []}, dtype=np.float64)
    codes, names = encode(train.column("variable"))
    values = as_numpy(train.column("value"), np.float64)
    count = np.bincount(codes, minlength=len(names)).astype(np.float64)
    mean = np.bincount(codes, weights=values, minlength=len(names)) / count
    m2 = np.bincount(codes, weights=(values - mean[codes]) ** 2, minlength=len(names))
    return pd.DataFrame({"count": count, "mean": mean, "m2": m2}, index=pd.Index(names.to_pylist()))


def merge_moments(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Chan et al.'s pairwise combination of (count, mean, M2), aligned by variable."""
    index = a.index.union(b.index)
    a = a.reindex(index, fill_value=0.0)
    b = b.reindex(index, fill_value=0.0)
    n = a["count"] + b["count"]
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * (b["count"] / n)
    m2 = a["m2"] + b["m2"] + delta**2 * (a["count"] * b["count"] / n)
    return pd.DataFrame({"count": n, "mean": mean, "m2": m2}, index=index)


def train_statistics(events_dir: str | Path) -> pd.DataFrame:
    """count, mean, std (ddof 1; 1 where undefined or 0) of every train variable,
    sorted by name."""
    total = pd.DataFrame({"count": [], "mean": [], "m2": []}, dtype=np.float64)
    for path in partition_paths(events_dir):
        table = read_partition(path, ("variable", "value", "split"))
        total = merge_moments(total, partition_moments(table))
    if total.empty:
        raise InputError(f"validated events directory {events_dir}: the train split has no events")
    total = total.sort_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(total["m2"] / (total["count"] - 1))
    std = std.where((total["count"] > 1) & (std > 0) & np.isfinite(std), 1.0)
    return pd.DataFrame({"count": total["count"].astype(np.int64), "mean": total["mean"], "std": std})


def write_statistics(stats: pd.DataFrame, stats_path: str | Path, vocab_path: str | Path) -> None:
    variables = {
        name: {"mean": mean, "std": std, "count": count}
        for name, mean, std, count in zip(
            stats.index, stats["mean"].tolist(), stats["std"].tolist(), stats["count"].tolist()
        )
    }
    write_json(stats_path, {"split": "train", "ddof": 1, "variables": variables})
    write_json(vocab_path, {"variables": list(stats.index)})


def load_normalization(stats_path: str | Path, vocabulary: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float64 [V] in vocabulary-id order."""
    stats = read_json(stats_path)["variables"]
    missing = [name for name in vocabulary if name not in stats]
    if missing:
        raise InputError(f"statistics file {stats_path}: no statistics for {', '.join(missing[:10])}")
    mean = np.array([stats[name]["mean"] for name in vocabulary], dtype=np.float64)
    std = np.array([stats[name]["std"] for name in vocabulary], dtype=np.float64)
    return mean, std


def load_vocabulary(vocab_path: str | Path) -> list[str]:
    variables = read_json(vocab_path)["variables"]
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
    print(f"stats: {len(stats)} train variables, {int(stats['count'].sum())} train events")
    return 0
