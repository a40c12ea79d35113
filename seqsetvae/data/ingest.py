"""`seqsetvae ingest`: raw event CSVs -> validated, deduplicated patient partitions.

Two passes, both vectorised and memory-bounded:

1. Stream the event files in blocks (`formats.BLOCK_BYTES` of CSV, or a format's batches); validate each block (patient id,
   variable, time, value), drop bad rows counted by reason, and append the rest,
   compactly encoded (patient and variable as integer codes), to one Arrow IPC file
   per partition (partition = FNV-1a hash of the canonical patient id modulo the
   partition count, so a patient's rows all land in one partition). Times in hours
   become minutes (x 60, rounded to 1e-6 minute).
2. Per partition: sort by (patient_id, time, variable), drop exact duplicate rows,
   merge conflicting duplicates to their mean, and write `part-NNNNN.arrow` with the
   columns of docs/design.md.

Policies (every dropped row is counted in qc.json under its reason):
- patient_id_missing, variable_missing, time_missing, time_not_numeric,
  time_not_finite (also after the hours-to-minutes conversion), value_missing,
  value_not_numeric, value_not_finite, value_out_of_range (|value| > 1e30): the row is
  dropped; when these rows are more than `data.max_invalid_fraction` of all rows the
  stage fails, naming example rows and the column.
- negative_time: dropped (events charted before admission), not an input error.
- patient_without_label: dropped (`data.unlabeled_events: drop`) or an error; ids
  that differ from a label's id only in leading zeros or case are named in a warning.
- all of the above together: more than `data.max_dropped_fraction` of all rows stops
  the stage, naming every reason with example rows.
- duplicate_row: an exact duplicate of another row (patient, time, variable, value).
- conflicting_duplicate_merged: the same (patient, time, variable) with different
  values is kept once with the mean of its distinct values (of its valued rows, when
  some have no value); the extra rows are counted.
- events without a value: where the format says a null value is an event, not a bad
  row (MEDS: codes without a `numeric_value`), the row is kept with a null value and
  counted in qc.json's `rows_without_value` (docs/input_formats.md).
A row with several problems is counted once, under the first reason in this order.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqsetvae.data import SPLITS
from seqsetvae.data.csvio import (
    canonical_ids,
    canonical_ids_encoded,
    dictionary_parts,
    parse_labels,
    parse_numbers,
    read_table,
    row_examples,
)
from seqsetvae.data.formats import EventSource, Locator, event_source
from seqsetvae.data.splits import label_columns
from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path, write_json
from seqsetvae.settings import load_settings

AUTO_PARTITION_BYTES = 64 << 20  # ~2.5M rows of a typical event CSV per partition
EXAMPLES_PER_REASON = 5
# |value| above this is no measurement (a unit or export error): dropped as
# value_out_of_range, so that every later sum, square and float32 z-value stays finite
MAX_ABS_VALUE = 1e30
KEY_LIMIT = 2**62  # (patient, time, variable) packed into one int64 sort key below this

# row drop reasons of the first pass, in priority order, with the column they concern
ROW_REASONS = {
    "patient_id_missing": "patient_id",
    "variable_missing": "variable",
    "time_missing": "time",
    "time_not_numeric": "time",
    "time_not_finite": "time",
    "value_missing": "value",
    "value_not_numeric": "value",
    "value_not_finite": "value",
    "value_out_of_range": "value",
    "negative_time": "time",
    "outside_observation_window": "time",
    "patient_without_label": "patient_id",
}
# counted against data.max_invalid_fraction: bad cells, not the policies after them
INVALID_REASONS = tuple(
    r for r in ROW_REASONS if r not in ("negative_time", "outside_observation_window", "patient_without_label")
)
# deliberate policies: never counted against data.max_dropped_fraction (a 24 h window
# drops most of a long stay); nor are the formats' own reasons (formats/__init__.py)
POLICY_REASONS = ("outside_observation_window",)
DUPLICATE_REASONS = ("duplicate_row", "conflicting_duplicate_merged")
_CODE = {reason: code for code, reason in enumerate(ROW_REASONS, start=1)}

RAW_SCHEMA = pa.schema(
    [("patient", pa.int32()), ("variable", pa.int32()), ("time", pa.float64()), ("value", pa.float64())]
)
EVENTS_SCHEMA = pa.schema(
    [
        ("patient_id", pa.string()),
        ("time", pa.float64()),
        ("variable", pa.string()),
        ("value", pa.float64()),
        ("split", pa.string()),
    ]
)


def stable_partition(ids: pa.Array, n_partitions: int) -> np.ndarray:
    """FNV-1a 64-bit hash of each id's UTF-8 bytes modulo `n_partitions` (int32).

    Stable across runs, machines and Python versions (unlike `hash()`); vectorised
    over ids, looping only over character positions.
    """
    ids = ids.cast(pa.large_string())
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    n = len(ids)
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64)[ids.offset : ids.offset + n + 1]
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8) if ids.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    hashes = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for position in range(int(lengths.max()) if n else 0):
        active = np.flatnonzero(lengths > position)
        byte = data[offsets[active] + position].astype(np.uint64)
        hashes[active] = (hashes[active] ^ byte) * prime
    return (hashes % np.uint64(n_partitions)).astype(np.int32)


def auto_partitions(size_bytes: int) -> int:
    return max(1, math.ceil(size_bytes / AUTO_PARTITION_BYTES))


class Labels:
    """The labelled patients, sorted by canonical id: id, label, split, partition."""

    def __init__(self, labels_path: str, splits_path: str, columns: dict, n_partitions: int):
        table = read_table(labels_path, "labels", {"patient_id": columns["patient_id"], "label": columns["label"]})
        self.rows_in = len(table)
        ids = canonical_ids(table["patient_id"])
        label = parse_labels(table["label"])
        bad = np.flatnonzero(label < 0)
        if len(bad):
            values = sorted(set(table["label"].take(pa.array(bad[:20])).to_pylist()))
            raise InputError(
                f"labels file {labels_path}: rows {row_examples(bad + 1)}, column {columns['label']!r}: "
                f"label must be 0 or 1, found {', '.join(map(repr, values[:5]))}"
            )
        empty = np.flatnonzero(pc.utf8_length(ids).to_numpy(zero_copy_only=False) == 0)
        if len(empty):
            raise InputError(
                f"labels file {labels_path}: rows {row_examples(empty + 1)}, column {columns['patient_id']!r}: "
                "empty patient id"
            )
        order = pc.sort_indices(pa.table({"id": ids, "label": label}), [("id", "ascending"), ("label", "ascending")])
        order = order.to_numpy()
        ids, label = ids.take(order), label[order]
        same = pc.equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False) if len(ids) > 1 else np.zeros(0, bool)
        conflict = np.flatnonzero(same & (label[1:] != label[:-1]))
        if len(conflict):
            details = "; ".join(
                f"patient {ids[int(i)].as_py()!r} (rows {order[i] + 1} and {order[i + 1] + 1})" for i in conflict[:5]
            )
            raise InputError(
                f"labels file {labels_path}, column {columns['label']!r}: conflicting labels for {details}"
            )
        first = np.concatenate([[True], ~same])
        self.duplicate_rows = int((~first).sum())
        self.ids = ids.filter(pa.array(first))
        self.label = label[first]
        self.split = self._splits(splits_path)
        self.partition = stable_partition(self.ids, n_partitions)

    def __len__(self) -> int:
        return len(self.ids)

    def _splits(self, splits_path: str) -> np.ndarray:
        table = read_table(splits_path, "splits", {"patient_id": "patient_id", "split": "split"})
        index = pc.index_in(canonical_ids(table["patient_id"]), value_set=self.ids)
        split_code = pc.index_in(table["split"], value_set=pa.array(SPLITS))
        bad = np.flatnonzero(pc.is_null(split_code).to_numpy(zero_copy_only=False))
        if len(bad):
            raise InputError(
                f"splits file {splits_path}: rows {row_examples(bad + 1)}, column 'split': "
                f"expected train, valid or test"
            )
        known = ~pc.is_null(index).to_numpy(zero_copy_only=False)
        patient = pc.fill_null(index, 0).to_numpy(zero_copy_only=False)[known]
        code = split_code.to_numpy(zero_copy_only=False)[known].astype(np.int8)
        split = np.full(len(self.ids), -1, dtype=np.int8)
        split[patient] = code
        conflicting = np.flatnonzero(split[patient] != code)
        if len(conflicting):
            rows = np.flatnonzero(known)[np.isin(patient, patient[conflicting])] + 1
            raise InputError(
                f"splits file {splits_path}: rows {row_examples(rows)}, column 'split': a patient listed twice "
                f"with different splits, e.g. {self.ids[int(patient[conflicting[0]])].as_py()!r}"
            )
        missing = np.flatnonzero(split < 0)
        if len(missing):
            examples = ", ".join(repr(i) for i in self.ids.take(pa.array(missing[:5])).to_pylist())
            raise InputError(
                f"splits file {splits_path}, column 'patient_id': {len(missing)} labelled patient(s) have no "
                f"split, e.g. {examples} (was it made from this labels file? rerun `seqsetvae splits`)"
            )
        return split


class FirstPass:
    """Streaming validation of the event files into per-partition raw Arrow files."""

    def __init__(self, labels: Labels, source: EventSource, data: dict, raw_dir: Path, n_partitions: int):
        self.labels, self.data, self.raw_dir = labels, data, raw_dir
        self.required = source.columns
        self.time_scale = source.minutes_per_unit
        window = data["observation_window_hours"]
        self.window_minutes = None if window is None or source.windowed else window * 60.0
        self.counts = np.zeros(len(ROW_REASONS) + 1, dtype=np.int64)
        self.examples: dict[str, list[tuple[str, int]]] = {reason: [] for reason in ROW_REASONS}
        self.variables: list[str] = []
        self.variable_set: dict[str, int] = {}
        self.labelled_seen = np.zeros(len(labels), dtype=bool)
        self.unlabelled_ids: list[pa.Array] = []
        self._unlabelled_unique: pa.Array | None = None
        self.writers = [pa.ipc.new_file(str(raw_dir / f"raw-{p:05d}.arrow"), RAW_SCHEMA) for p in range(n_partitions)]
        self.valueless_events = source.valueless_events
        self.rows_without_value = 0  # kept rows without a value (before deduplication)

    def unlabelled_unique(self) -> pa.Array:
        """The distinct ids of events without a label (computed once)."""
        if self._unlabelled_unique is None:
            ids = self.unlabelled_ids or [pa.array([], pa.string())]
            self._unlabelled_unique = pc.unique(pa.concat_arrays(ids))
        return self._unlabelled_unique

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def run(self, source: EventSource) -> None:
        for batch, locator in source.batches():
            self._block(batch, locator)

    def _variable_codes(self, names: pa.Array) -> np.ndarray:
        """Global integer codes of a block's distinct variable names (few per block)."""
        new = [name for name in names.to_pylist() if name not in self.variable_set]
        for name in dict.fromkeys(new):
            self.variable_set[name] = len(self.variables)
            self.variables.append(name)
        return pc.index_in(names, value_set=pa.array(self.variables, pa.string())).to_numpy(zero_copy_only=False)

    def _block(self, batch: pa.RecordBatch, locator: Locator) -> None:
        n = batch.num_rows
        id_dict, id_index = canonical_ids_encoded(batch.column(0))
        dict_label = pc.index_in(id_dict, value_set=self.labels.ids).fill_null(-1).to_numpy(zero_copy_only=False)
        dict_empty = pc.utf8_length(id_dict).to_numpy(zero_copy_only=False) == 0
        row_label = dict_label[id_index].astype(np.int32)
        unlabelled_dict = (dict_label < 0) & ~dict_empty

        variable_names, variable_index = dictionary_parts(batch.column(2))
        variable_names = pc.utf8_trim_whitespace(variable_names)
        variable_empty = pc.utf8_length(variable_names).to_numpy(zero_copy_only=False) == 0
        variable_code = self._variable_codes(variable_names).astype(np.int32)

        time, time_problem = parse_numbers(batch.column(1))
        value, value_problem = parse_numbers(batch.column(3))
        if self.valueless_events:  # null: an event without a value, kept as NaN until written
            value_problem[value_problem == 1] = 0
        if self.time_scale != 1.0:  # hours: rounded so that 11/60 h is 11 minutes, not 10.999999999999998
            with np.errstate(over="ignore", invalid="ignore"):
                time = np.round(time * self.time_scale, 6)
            time_problem[(time_problem == 0) & ~np.isfinite(time)] = 3  # e.g. 1e307 h: infinite minutes
        value_problem[(value_problem == 0) & (np.abs(value) > MAX_ABS_VALUE)] = 4

        # reasons, lowest priority first so that the first reason in ROW_REASONS wins
        reason = np.zeros(n, dtype=np.int8)
        reason[row_label < 0] = _CODE["patient_without_label"]
        if self.window_minutes is not None:
            reason[(time_problem == 0) & (time >= self.window_minutes)] = _CODE["outside_observation_window"]
        reason[(time_problem == 0) & (time < 0)] = _CODE["negative_time"]
        for problem, prefix in ((value_problem, "value"), (time_problem, "time")):
            if problem.any():
                for code, suffix in ((4, "out_of_range"), (3, "not_finite"), (2, "not_numeric"), (1, "missing")):
                    if f"{prefix}_{suffix}" in _CODE:  # times have no out_of_range code
                        reason[problem == code] = _CODE[f"{prefix}_{suffix}"]
        if variable_empty.any():
            reason[variable_empty[variable_index]] = _CODE["variable_missing"]
        if dict_empty.any():
            reason[dict_empty[id_index]] = _CODE["patient_id_missing"]

        if unlabelled_dict.any() and self.data["unlabeled_events"] == "error":
            rows = np.flatnonzero(unlabelled_dict[id_index])
            examples = ", ".join(repr(i) for i in id_dict.filter(pa.array(unlabelled_dict))[:5].to_pylist())
            raise InputError(
                f"events {where(locator, rows)}, column "
                f"{self.required['patient_id']!r}: events of patients without a label, e.g. {examples} "
                "(data.unlabeled_events: error; set it to drop to drop and count them)"
            )
        self._count(reason, locator)
        if unlabelled_dict.any():
            self.unlabelled_ids.append(id_dict.filter(pa.array(unlabelled_dict)))
        self.labelled_seen[dict_label[dict_label >= 0]] = True

        keep = np.flatnonzero(reason == 0)
        if self.valueless_events:
            self.rows_without_value += int(np.isnan(value[keep]).sum())
        patient = row_label[keep]
        partition = self.labels.partition[patient]
        columns = [patient, variable_code[variable_index[keep]], time[keep], value[keep]]
        if len(self.writers) == 1:
            self._write(0, columns)
            return
        if len(self.writers) <= 64:  # a few vectorised scans beat a sort
            for p in np.unique(partition):
                rows = np.flatnonzero(partition == p)
                self._write(p, [column[rows] for column in columns])
            return
        order = np.argsort(partition, kind="stable")
        bounds = np.searchsorted(partition[order], np.arange(len(self.writers) + 1))
        columns = [column[order] for column in columns]
        for p in np.flatnonzero(np.diff(bounds)):
            self._write(p, [column[bounds[p] : bounds[p + 1]] for column in columns])

    def _write(self, partition: int, columns: list[np.ndarray]) -> None:
        if len(columns[0]):
            self.writers[partition].write_batch(pa.record_batch(columns, schema=RAW_SCHEMA))

    def _count(self, reason: np.ndarray, locator: Locator) -> None:
        counts = np.bincount(reason, minlength=len(self.counts))
        self.counts += counts
        for name, code in _CODE.items():
            have = self.examples[name]
            if counts[code] and len(have) < EXAMPLES_PER_REASON:
                have.extend(locator(np.flatnonzero(reason == code)[: EXAMPLES_PER_REASON - len(have)]))


def where(locator: Locator, rows: np.ndarray) -> str:
    """`file F: rows 3, 17` (the first two files) of some of a batch's rows."""
    files: dict[str, list[int]] = {}
    for file, row in locator(rows[:50]):
        files.setdefault(file, []).append(row)
    shown = list(files.items())[:2]
    return "; ".join(f"file {f}: rows {row_examples(np.array(r))}" for f, r in shown)


def deduplicate(patient, time, variable_rank, value):
    """Sort rows by (patient, time, variable) and resolve duplicates.

    Returns (order, keep_value, n_exact, n_merged): `order` indexes the input rows to
    keep, sorted; `keep_value` their values (means for merged conflicting duplicates).
    """
    n = len(patient)
    low = time.min(initial=0.0)
    if n and (time.max() - low) < 2**40 and np.array_equal(time, np.floor(time)):
        time_rank = (time - low).astype(np.int64)  # whole minutes: no ranking sort needed
    else:
        time_order = np.argsort(time)
        sorted_time = time[time_order]
        time_rank = np.empty(n, dtype=np.int64)
        time_rank[time_order] = np.cumsum(np.concatenate([[0], sorted_time[1:] != sorted_time[:-1]]))
    n_times, n_variables = int(time_rank.max(initial=0)) + 1, int(variable_rank.max(initial=0)) + 1
    n_patients = int(patient.max(initial=0)) + 1
    if n_patients * n_times * n_variables < KEY_LIMIT:
        key = (patient.astype(np.int64) * n_times + time_rank) * n_variables + variable_rank
        if np.all(key[1:] >= key[:-1]):  # already sorted, as many exports are
            order = np.arange(n)
        else:
            order = np.argsort(key)
            key = key[order]
    else:  # too many distinct keys for one int64: the slower general sort
        order = np.lexsort((variable_rank, time_rank, patient))
        p, t, v = patient[order], time_rank[order], variable_rank[order]
        change = (p[1:] != p[:-1]) | (t[1:] != t[:-1]) | (v[1:] != v[:-1])
        key = np.cumsum(np.concatenate([[0], change]))
    same = key[1:] == key[:-1]
    sorted_value = value[order]
    if not same.any():
        return order, sorted_value, 0, 0
    # rows in groups of more than one: re-sort them by value inside their group (NaN,
    # an event without a value, sorts last)
    in_group = np.zeros(n, dtype=bool)
    in_group[1:] |= same
    in_group[:-1] |= same
    positions = np.flatnonzero(in_group)
    by_value = positions[np.lexsort((sorted_value[positions], key[positions]))]
    order[positions], sorted_value[positions] = order[by_value], sorted_value[by_value]
    missing = np.isnan(sorted_value)
    equal = (sorted_value[1:] == sorted_value[:-1]) | (missing[1:] & missing[:-1])
    exact = np.concatenate([[False], same & equal])
    order, key, sorted_value = order[~exact], key[~exact], sorted_value[~exact]
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    sizes = np.diff(np.append(starts, len(key)))
    valued = ~np.isnan(sorted_value)
    with np.errstate(invalid="ignore", divide="ignore"):  # a group of valueless rows stays NaN
        means = np.add.reduceat(np.where(valued, sorted_value, 0.0), starts) / np.add.reduceat(valued, starts)
    return order[starts], means, int(exact.sum()), int((sizes - 1).sum())


def ingest(settings: dict, event_paths: list[str], labels_path: str, splits_path: str, out: str, threads: int) -> dict:
    data = settings["data"]
    pa.set_cpu_count(max(1, threads))
    pa.set_io_thread_count(max(1, threads))
    source = event_source(settings, event_paths, labels_path)
    required = source.columns
    paths = source.paths()
    n_partitions = auto_partitions(source.size_bytes()) if data["partitions"] == "auto" else int(data["partitions"])
    labels = Labels(labels_path, splits_path, label_columns(data), n_partitions)

    with atomic_path(out, directory=True) as tmp:
        raw_dir = tmp / ".raw"
        raw_dir.mkdir()
        first_pass = FirstPass(labels, source, data, raw_dir, n_partitions)
        try:
            first_pass.run(source)
        finally:
            first_pass.close()
        counts = dict(zip(ROW_REASONS, (int(c) for c in first_pass.counts[1:])))
        rows_in = int(first_pass.counts.sum())
        _check_invalid_share(counts, rows_in, first_pass.examples, required, data["max_invalid_fraction"])
        near_misses = near_miss_ids(first_pass.unlabelled_unique(), labels.ids)
        _check_dropped_share(counts, rows_in, first_pass.examples, required, data["max_dropped_fraction"], near_misses)

        n_events, n_sets, duplicates = second_pass(raw_dir, tmp, labels, first_pass.variables, n_partitions)
        shutil.rmtree(raw_dir)
        qc = _qc(
            labels,
            first_pass,
            counts,
            duplicates,
            rows_in - source.rows_copied,  # the input's rows; the copies are written events
            n_events,
            n_sets,
            n_partitions,
            paths,
            data,
            source.drops,
            source.rows_copied,
        )
        _check_labels_without_events(qc, labels, first_pass, labels_path, data)
        if source.cohort is not None:  # the format's task: stays in, eligible, excluded by reason
            qc["cohort"] = source.cohort
        if source.format_counts is not None:  # kinds of kept rows the format reads its own way
            qc["format_counts"] = source.format_counts
        qc["warnings"] = [_near_miss_note(near_misses)] if near_misses else []
        if qc["rows_kept"] == 0:
            raise InputError(
                f"events file(s) {', '.join(map(str, paths))}: no valid event of a labelled patient "
                f"(dropped: {_nonzero(qc['rows_dropped'])})"
            )
        _write_patients(tmp / "patients.parquet", labels, n_events, n_sets)
        write_json(tmp / "qc.json", qc)
    return qc


def second_pass(raw_dir: Path, out_dir: Path, labels: Labels, variables: list[str], n_partitions: int):
    """Deduplicate and sort each raw partition into `part-NNNNN.arrow`, one at a time
    (memory bounded by the largest partition). Returns per-patient event and set
    counts and the duplicate counts."""
    variable_order = np.argsort(np.array(variables, dtype=str), kind="stable")
    variable_rank = np.empty(len(variables), dtype=np.int32)
    variable_rank[variable_order] = np.arange(len(variables), dtype=np.int32)
    sorted_variables = pa.array([variables[i] for i in variable_order], pa.string())
    split_names = pa.array(SPLITS)
    n_events = np.zeros(len(labels), dtype=np.int64)
    n_sets = np.zeros(len(labels), dtype=np.int64)
    duplicates = dict.fromkeys(DUPLICATE_REASONS, 0)
    for p in range(n_partitions):
        raw_path = raw_dir / f"raw-{p:05d}.arrow"
        with pa.memory_map(str(raw_path)) as source:
            raw = pa.ipc.open_file(source).read_all()
        patient, time = raw["patient"].to_numpy(), raw["time"].to_numpy()
        rank = variable_rank[raw["variable"].to_numpy()]
        order, value, n_exact, n_merged = deduplicate(patient, time, rank, raw["value"].to_numpy())
        del raw
        raw_path.unlink()
        duplicates["duplicate_row"] += n_exact
        duplicates["conflicting_duplicate_merged"] += n_merged
        patient, time, rank = patient[order], time[order], rank[order]
        part = out_dir / f"part-{p:05d}.arrow"
        _write_partition(part, labels, split_names, sorted_variables, patient, time, rank, value)
        n_events += np.bincount(patient, minlength=len(labels))
        new_set = np.concatenate([[True], (patient[1:] != patient[:-1]) | (time[1:] != time[:-1])])[: len(patient)]
        n_sets += np.bincount(patient[new_set], minlength=len(labels))
    return n_events, n_sets, duplicates


def _write_partition(path, labels, split_names, sorted_variables, patient, time, variable_rank, value) -> None:
    table = pa.table(
        {
            "patient_id": labels.ids.take(pa.array(patient)),
            "time": pa.array(time, pa.float64()),
            "variable": sorted_variables.take(pa.array(variable_rank)),
            "value": pa.array(value, pa.float64(), from_pandas=True),  # NaN: no value, written as null
            "split": split_names.take(pa.array(labels.split[patient])),
        },
        schema=EVENTS_SCHEMA,
    )
    with pa.ipc.new_file(str(path), EVENTS_SCHEMA) as writer:
        writer.write_table(table, max_chunksize=1 << 20)


def _write_patients(path: Path, labels: Labels, n_events: np.ndarray, n_sets: np.ndarray) -> None:
    kept = np.flatnonzero(n_events > 0)
    table = pa.table(
        {
            "patient_id": labels.ids.take(pa.array(kept)),
            "label": pa.array(labels.label[kept], pa.int8()),
            "split": pa.array(SPLITS).take(pa.array(labels.split[kept])),
            "n_events": pa.array(n_events[kept], pa.int64()),
            "n_sets": pa.array(n_sets[kept], pa.int64()),
            "partition": pa.array(labels.partition[kept], pa.int32()),
        }
    )
    pq.write_table(table, path)


def _nonzero(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def _reason_details(reasons, counts: dict, examples: dict, required: dict) -> list[str]:
    details = []
    for reason in reasons:
        if counts[reason]:
            files = {}
            for file, row in examples[reason]:
                files.setdefault(file, []).append(row)
            where = "; ".join(f"file {f} rows {row_examples(np.array(r))}" for f, r in files.items())
            details.append(f"{reason}: {counts[reason]} rows, column {required[ROW_REASONS[reason]]!r} (e.g. {where})")
    return details


def _check_labels_without_events(qc: dict, labels: Labels, first_pass: FirstPass, labels_path: str, data: dict) -> None:
    """data.labels_without_events: error stops on a label whose patient has no event."""
    if data["labels_without_events"] != "error" or qc["patients_dropped"]["label_without_events"] == 0:
        return
    missing = np.flatnonzero(~first_pass.labelled_seen)
    examples = ", ".join(repr(i) for i in labels.ids.take(pa.array(missing[:5])).to_pylist())
    raise InputError(
        f"labels file {labels_path}: {len(missing)} labelled patient(s) have no event in the events, e.g. {examples} "
        "(data.labels_without_events: error; drop counts them as label_without_events)"
    )


def _check_invalid_share(counts: dict, rows_in: int, examples: dict, required: dict, limit: float) -> None:
    invalid = sum(counts[reason] for reason in INVALID_REASONS)
    if rows_in == 0 or invalid <= limit * rows_in:
        return
    details = _reason_details(INVALID_REASONS, counts, examples, required)
    raise InputError(
        f"events: {invalid} of {rows_in} rows ({invalid / rows_in:.1%}) have a missing or invalid patient id, "
        f"variable, time or value, more than data.max_invalid_fraction = {limit:g}:\n  " + "\n  ".join(details)
    )


def near_miss_ids(unlabelled: pa.Array, labelled: pa.Array, limit: int = 3) -> list[tuple[str, str]]:
    """(events id, labels id) pairs that differ only in leading zeros or letter case,
    e.g. `007` and `7`: the usual reason why events find no label."""

    def loose(ids: pa.Array) -> pa.Array:
        return pc.utf8_lower(pc.replace_substring_regex(ids, r"^0+([0-9])", r"\1"))

    if len(unlabelled) == 0 or len(labelled) == 0:
        return []
    match = pc.index_in(loose(unlabelled), value_set=loose(labelled))
    found = np.flatnonzero(pc.is_valid(match).to_numpy(zero_copy_only=False))[:limit]
    return [(unlabelled[int(i)].as_py(), labelled[match[int(i)].as_py()].as_py()) for i in found]


def _near_miss_note(pairs: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{a!r} in the events and {b!r} in the labels" for a, b in pairs)
    return (
        f"ids that differ only in leading zeros or case, e.g. {shown}: ids are compared as strings "
        "(after stripping whitespace and a trailing .0), so write them the same way in both files"
    )


def _check_dropped_share(
    counts: dict, rows_in: int, examples: dict, required: dict, limit: float, near_misses: list
) -> None:
    """Every first-pass reason counts (negative times and unlabelled patients too):
    losing most of the input to any policy is almost always a mistake upstream."""
    dropped = sum(count for reason, count in counts.items() if reason not in POLICY_REASONS)
    if rows_in == 0 or dropped <= limit * rows_in:
        return
    details = _reason_details(ROW_REASONS, counts, examples, required)
    hint = f"\n  {_near_miss_note(near_misses)}" if near_misses and counts["patient_without_label"] else ""
    raise InputError(
        f"events: {dropped} of {rows_in} rows ({dropped / rows_in:.1%}) would be dropped, more than "
        f"data.max_dropped_fraction = {limit:g}:\n  " + "\n  ".join(details) + hint
    )


def _qc(
    labels,
    first_pass,
    counts,
    duplicates,
    rows_in,
    n_events,
    n_sets,
    n_partitions,
    paths,
    data,
    format_drops,
    rows_copied,
) -> dict:
    rows_dropped = dict(counts)
    examples = {reason: [f"{file}:{row}" for file, row in rows] for reason, rows in first_pass.examples.items() if rows}
    for reason, count in format_drops.counts.items():  # the format's own reasons, before the shared ones
        rows_dropped[reason] = rows_dropped.get(reason, 0) + count
        rows_in += count
        if format_drops.examples[reason]:
            examples.setdefault(reason, []).extend(f"{f}:{r}" for f, r in format_drops.examples[reason])
    rows_dropped |= duplicates
    # a row in the observation of several samples (MEDS) is written once per sample
    rows_kept = rows_in + rows_copied - sum(rows_dropped.values())
    if rows_kept != int(n_events.sum()):  # a bug, not bad input
        raise RuntimeError(f"ingest: row balance broken ({rows_kept} != {int(n_events.sum())})")
    unlabelled = len(first_pass.unlabelled_unique())
    kept = n_events > 0
    seen = first_pass.labelled_seen
    patients_dropped = {
        "patient_without_label": unlabelled,
        "label_without_events": int((~seen).sum()),
        "no_valid_events": int((seen & ~kept).sum()),
    }
    labels_dropped = {
        "duplicate_label_row": labels.duplicate_rows,
        "label_without_events": patients_dropped["label_without_events"],
        "no_valid_events": patients_dropped["no_valid_events"],
    }
    by_split = {
        name: {
            "patients": int((kept & (labels.split == code)).sum()),
            "events": int(n_events[labels.split == code].sum()),
            "sets": int(n_sets[labels.split == code].sum()),
        }
        for code, name in enumerate(SPLITS)
    }
    return {
        "rows_in": rows_in,
        "rows_copied": rows_copied,
        "rows_kept": rows_kept,
        "rows_dropped": rows_dropped,
        "rows_without_value": first_pass.rows_without_value,
        "patients_in": int(len(labels) + unlabelled),
        "patients_kept": int(kept.sum()),
        "patients_dropped": patients_dropped,
        "labels_in": labels.rows_in,
        "labels_kept": int(kept.sum()),
        "labels_dropped": labels_dropped,
        "by_split": by_split,
        "variables": len(first_pass.variables),
        "partitions": n_partitions,
        "format": data["format"],
        "time_unit": data["time_unit"] if data["format"] == "csv" else "minutes",
        "observation_window_hours": data["observation_window_hours"],
        "events_files": [str(p) for p in paths] if len(paths) <= 100 else [str(p) for p in paths[:100]] + ["..."],
        "events_file_count": len(paths),
        "dropped_row_examples": examples,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--events", nargs="+", required=True, help="raw event CSV file(s)")
    parser.add_argument("--labels", required=True, help="labels CSV (patient id, 0/1 label)")
    parser.add_argument("--splits", required=True, help="splits.csv of `seqsetvae splits`")
    parser.add_argument("--out", required=True, help="output directory (part-*.arrow, patients.parquet, qc.json)")
    parser.add_argument("--settings", default="{}", help="JSON config sections (data)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="pyarrow threads")
    args = parser.parse_args(argv)
    settings = load_settings(args.settings)
    qc = ingest(settings, args.events, args.labels, args.splits, args.out, args.threads)
    print(f"ingest: read {len(qc['events_files'])} event file(s): " + ", ".join(qc["events_files"]))
    print(
        f"ingest: {qc['rows_kept']} of {qc['rows_in']} rows kept, {qc['patients_kept']} patients, "
        f"{qc['partitions']} partition(s); dropped: {_nonzero(qc['rows_dropped'])}"
    )
    for warning in qc["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
