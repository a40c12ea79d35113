"""Input formats: thin adapters from a dataset's own layout to the long event rows.

`data.format` names the layout of `data.events` (docs/input_formats.md):

- `csv`: long CSV files (patient id, time, variable, value), read by `ingest` itself;
- `meds`: a MEDS root (`data/**/*.parquet`, `metadata/subject_splits.parquet`) and a
  task's label files;
- `physionet2012`: a PhysioNet/CinC 2012 `set-*` directory and its `Outcomes-*.txt`;
- `physionet2019`: a PhysioNet/CinC 2019 directory of hourly `.psv` files;
- `seqsetvae_v0`: the original research code's `patient_ehr/{train,valid,test}/` and `oc.csv`.

Each non-CSV adapter does two things. `write_labels` (the `seqsetvae labels` stage)
writes the patients' labels as the CSV the `splits` and `ingest` stages read
(`patient_id,label[,prediction_time]`) and, where the format carries splits, a splits
CSV. Its event source then yields the events as record batches of `patient_id, time
(minutes), variable, value` to `ingest`'s first pass, so that every validation, policy
and QC count after that is the CSV path's. Rows the format itself rules out (a MEDS row
without a numeric value, P2012's `-1` markers, ...) are counted by named reason in
`Drops`, which `ingest` adds to qc.json.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from seqsetvae.data.csvio import compression, iter_blocks, read_header
from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path
from seqsetvae.settings import load_settings

FORMATS = ("csv", "meds", "physionet2012", "physionet2019", "seqsetvae_v0")
EXAMPLES_PER_REASON = 5
# events gathered from many small files before one batch goes to ingest's first pass
BATCH_EVENTS = 1 << 20
BLOCK_BYTES = 16 << 20  # of CSV text per first-pass block


@dataclass
class Locator:
    """Where each row of a batch came from: (file, 1-based data row) for examples and
    error messages, without a Python object per row."""

    files: list[str]
    file_index: np.ndarray  # [rows] int32 into files
    row: np.ndarray  # [rows] int64, 1-based data row (or hour row) in its file

    def __call__(self, rows: np.ndarray) -> list[tuple[str, int]]:
        return [(self.files[int(f)], int(r)) for f, r in zip(self.file_index[rows], self.row[rows])]


def csv_locator(path: str, row_offset: int, n: int) -> Locator:
    return Locator([str(path)], np.zeros(n, np.int32), np.arange(row_offset + 1, row_offset + n + 1, dtype=np.int64))


@dataclass
class Drops:
    """Rows a format rules out before the shared validation, by reason."""

    reasons: dict[str, str]  # reason -> the column or cell it concerns, for messages
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def __post_init__(self):
        self.counts = dict.fromkeys(self.reasons, 0)
        self.examples = {reason: [] for reason in self.reasons}

    def add(self, reason: str, locator: Locator, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self.counts[reason] += int(len(rows))
        have = self.examples[reason]
        if len(have) < EXAMPLES_PER_REASON:
            have.extend(locator(rows[: EXAMPLES_PER_REASON - len(have)]))


class EventSource:
    """What `ingest` reads of a non-CSV dataset."""

    format: str
    columns: dict[str, str]  # role -> this format's name for it, for messages
    drops: Drops
    minutes_per_unit = 1.0  # the batches' time unit (the adapters give minutes)
    windowed = False  # whether the source applies data.observation_window_hours itself
    cohort: dict | None = None  # a task's cohort counts (stays, eligible, excluded by reason)
    # whether a null value is an event without a value (a code, a static row: MEDS) rather
    # than a bad row; such events are kept with a null value (z = 0 in the shards)
    valueless_events = False
    rows_copied = 0  # events written beyond one per input row (a row shared by several samples: MEDS)
    format_counts: dict | None = None  # kept rows of kinds the format reads its own way (MEDS static rows)

    def paths(self) -> list[Path]:
        raise NotImplementedError

    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths())

    def batches(self) -> Iterator[tuple[pa.RecordBatch, Locator]]:
        """Record batches of `patient_id, time, variable, value` (time in minutes)."""
        raise NotImplementedError


class CsvFiles(EventSource):
    """The long CSV format: blocks of each file's four columns, as strings."""

    format = "csv"

    def __init__(self, paths: list[str], columns: dict, time_unit: str):
        self.columns = {role: columns[role] for role in ("patient_id", "time", "variable", "value")}
        self.minutes_per_unit = 60.0 if time_unit == "hours" else 1.0
        self.files = [read_header(path, "events", self.columns) for path in paths]
        self.drops = Drops({})

    def paths(self) -> list[Path]:
        return self.files

    def size_bytes(self) -> int:
        return sum(p.stat().st_size * (4 if compression(p) else 1) for p in self.files)  # compressed: ~4x

    def batches(self):
        for path in self.files:
            row_offset = 0
            for batch in iter_blocks(path, "events", self.columns, BLOCK_BYTES, dictionary=("patient_id", "variable")):
                yield batch, csv_locator(path, row_offset, batch.num_rows)
                row_offset += batch.num_rows


def event_batch(patient_ids, time, variable, value) -> pa.RecordBatch:
    arrays = [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in (patient_ids, time, variable, value)]
    return pa.RecordBatch.from_arrays(arrays, ["patient_id", "time", "variable", "value"])


class Gather:
    """Collects the events of many small files (numpy parts and dictionary codes) into
    batches of about BATCH_EVENTS events; a loop over files, never over events."""

    def __init__(self):
        self.variables: dict[str, int] = {}
        self._clear()

    def _clear(self):
        self.ids, self.files, self.parts, self.n = [], [], [], 0

    def variable_codes(self, names: list[str]) -> np.ndarray:
        for name in names:
            self.variables.setdefault(name, len(self.variables))
        return np.array([self.variables[name] for name in names], dtype=np.int32)

    def add(
        self, patient_id: str, file: str, time, variable_code, value, row
    ) -> Iterator[tuple[pa.RecordBatch, Locator]]:
        """Queue one file's events; yields a batch when enough are queued."""
        self.ids.append(patient_id)
        self.files.append(file)
        self.parts.append((time, variable_code, value, row))
        self.n += len(row)
        if self.n >= BATCH_EVENTS:
            yield self.flush()

    def flush(self) -> tuple[pa.RecordBatch, Locator]:
        sizes = np.array([len(part[3]) for part in self.parts], dtype=np.int64)
        file_index = np.repeat(np.arange(len(self.parts), dtype=np.int32), sizes)
        names = pa.array(list(self.variables), pa.string())
        batch = event_batch(
            pa.DictionaryArray.from_arrays(pa.array(file_index), pa.array(self.ids, pa.string())),
            _concat([part[0] for part in self.parts]),
            pa.DictionaryArray.from_arrays(pa.array(np.concatenate([part[1] for part in self.parts])), names),
            _concat([part[2] for part in self.parts]),
        )
        locator = Locator(list(self.files), file_index, np.concatenate([part[3] for part in self.parts]))
        self._clear()
        return batch, locator

    def rest(self) -> Iterator[tuple[pa.RecordBatch, Locator]]:
        if self.n:
            yield self.flush()


def _concat(parts: list) -> pa.Array:
    """One array of numeric (float64) or, when any part is text, text cells."""
    arrays = [part if isinstance(part, pa.Array) else pa.array(part) for part in parts]
    text = any(pa.types.is_string(a.type) or pa.types.is_large_string(a.type) for a in arrays)
    return pa.concat_arrays([a.cast(pa.string() if text else pa.float64()) for a in arrays])


def write_csv(table: pa.Table, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(quoting_style="needed"))


def adapter(name: str):
    """The module of a non-CSV format (imported on use)."""
    if name == "meds":
        from seqsetvae.data.formats import meds as module
    elif name in ("physionet2012", "physionet2019"):
        from seqsetvae.data.formats import physionet as module
    elif name == "seqsetvae_v0":
        from seqsetvae.data.formats import seqsetvae_v0 as module
    else:
        raise InputError(f"configuration key data.format: {name!r} has no adapter (csv is read by ingest)")
    return module


def event_source(settings: dict, events: list[str], labels_csv: str) -> EventSource:
    """The event source of `data.format` over `events` (CSV files, or one dataset path),
    with the labels CSV (MEDS reads its prediction times from the one `seqsetvae labels`
    wrote)."""
    data = settings["data"]
    if not events:
        raise InputError("ingest: no events file given")
    if data["format"] == "csv":
        return CsvFiles(events, data["columns"], data["time_unit"])
    if len(events) != 1:
        raise InputError(f"ingest: data.format {data['format']} reads one dataset path, got {len(events)}")
    return adapter(data["format"]).source(data["format"], Path(events[0]), Path(labels_csv), data)


def carries_splits(data: dict) -> bool:
    """Whether the dataset brings its own splits (then `seqsetvae labels` writes them)."""
    if data["format"] == "seqsetvae_v0":
        return True
    return data["format"] == "meds" and (Path(data["events"]) / "metadata" / "subject_splits.parquet").is_file()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="seqsetvae labels", description="a non-CSV dataset's labels (and splits) as the CSVs later stages read"
    )
    parser.add_argument("--events", required=True, help="the dataset (data.events)")
    parser.add_argument("--labels", default=None, help="the format's label files (data.labels), where separate")
    parser.add_argument("--out", required=True, help="labels CSV to write (patient_id,label[,prediction_time])")
    parser.add_argument("--splits-out", default=None, help="splits CSV to write when the format carries splits")
    parser.add_argument("--settings", default="{}", help="JSON config sections (data)")
    args = parser.parse_args(argv)
    data = load_settings(args.settings)["data"]
    module = adapter(data["format"])
    counts = module.write_labels(data["format"], Path(args.events), args.labels, args.out, args.splits_out, data)
    print("labels: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0
