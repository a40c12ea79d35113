"""MEDS (Medical Event Data Standard, `meds` 0.4): a MEDS root and a task's labels.

    <root>/data/**/*.parquet                subject_id, time, code, numeric_value[, ...]
    <root>/metadata/subject_splits.parquet  subject_id, split   (optional)
    data.labels: a label file or directory  subject_id, prediction_time, boolean_value

Files are checked against the `meds` package's schemas. Codes are the variables. One
prediction per subject: a subject with two label rows is an error. The prediction time
ends the subject's observation, inclusive as MEDS defines it (`data may be used up to
and including this time`); with `data.observation_window_hours` W only the window
`(prediction_time - W, prediction_time]` is kept. Times become minutes from the time
origin of the subject: its first timed event that is kept (so every subject's first set
is at minute 0, as with "minutes since admission" of the ICU formats).

- Events without a value (numeric_value null: diagnoses, procedures, orders, admission
  and transfer codes; rows with a `text_value` only, whose text is not read) are kept
  as events of their code with a null value (z = 0 in the shards: "this was
  recorded"), counted in qc.json's `rows_without_value` and `format_counts`.
- Static rows (time null, e.g. sex, ethnicity) are kept at the subject's time origin,
  so they join its first set; counted in `format_counts.static_rows`.
- Rows dropped here: `after_prediction_time`, `outside_observation_window`.

`subject_splits.parquet`'s `train`/`tuning`/`held_out` become train/valid/test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqsetvae.data.csvio import read_table
from seqsetvae.data.formats import Drops, EventSource, Locator, event_batch, write_csv
from seqsetvae.data.splits import SPLIT_ALIASES
from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path

DATA_COLUMNS = ("subject_id", "time", "code", "numeric_value", "text_value")
BATCH_ROWS = 1 << 20
US_PER_MINUTE = 60_000_000
CSV_BYTES_PER_ROW = 26  # a typical long event CSV row: AUTO_PARTITION_BYTES ~ 2.5M rows


def _schemas():
    import meds

    return meds


def _align(schema, table: pa.Table, path: Path, what: str) -> pa.Table:
    try:
        return schema.align(table)
    except Exception as error:  # flexible_schema's SchemaValidationError / TableValidationError
        raise InputError(f"MEDS {what} file {path}: does not match the MEDS {schema.__name__} ({error})") from None


def _parquet_files(path: Path, what: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"MEDS {what} {path}: not found")
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if not files:
        raise InputError(f"MEDS {what} directory {path}: no .parquet files in it")
    return files


def data_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise InputError(f"MEDS root {root}: not found (data.events)")
    if not (root / "data").is_dir():
        raise InputError(f"MEDS root {root}: no data/ directory (data.events names the MEDS root)")
    return _parquet_files(root / "data", "data")


def _check_data_schema(path: Path) -> list[str]:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(f"MEDS data file {path}: cannot be read as Parquet ({error})") from None
    _align(_schemas().DataSchema, schema.empty_table(), path, "data")
    return [c for c in DATA_COLUMNS if c in schema.names]


def _batches(path: Path, columns: list[str]):
    """(batch aligned to the MEDS data schema, first row number) of one data file."""
    start = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns):
        table = pa.Table.from_batches([batch])
        if "numeric_value" not in columns:
            table = table.append_column("numeric_value", pa.nulls(len(table), pa.float32()))
        if "text_value" not in columns:
            table = table.append_column("text_value", pa.nulls(len(table), pa.string()))
        yield _align(_schemas().DataSchema, table, path, "data"), start
        start += len(table)


class MEDS(EventSource):
    format = "meds"
    windowed = True  # the window ends at each subject's prediction time
    valueless_events = True  # a code without a numeric_value is an event, not a bad row
    columns = {"patient_id": "subject_id", "time": "time", "variable": "code", "value": "numeric_value"}

    def __init__(self, root: Path, labels_csv: Path, window_hours: float | None):
        self.files = data_files(root)
        labels = read_table(labels_csv, "labels", {"patient_id": "patient_id", "prediction_time": "prediction_time"})
        self.subjects = pc.cast(labels["patient_id"], pa.int64())
        self.prediction_us = pc.cast(pc.cast(labels["prediction_time"], pa.timestamp("us")), pa.int64()).to_numpy()
        self.window_us = None if window_hours is None else int(round(window_hours * 60 * US_PER_MINUTE))
        self.drops = Drops({"after_prediction_time": "time", "outside_observation_window": "time"})
        self.format_counts = {"static_rows": 0, "text_value_not_read": 0}

    def paths(self) -> list[Path]:
        return self.files

    def size_bytes(self) -> int:
        """CSV-equivalent size, for data.partitions: auto (Parquet is several times
        smaller than the CSV of its rows; partitions bound ingest's memory by rows)."""
        return sum(pq.ParquetFile(path).metadata.num_rows for path in self.files) * CSV_BYTES_PER_ROW

    def _classify(self, table: pa.Table):
        """(label row of each row or -1, time in us, static row, reason code 0 kept /
        1..2 dropped: the order of `self.drops`)."""
        subject = pc.index_in(table["subject_id"], value_set=self.subjects).fill_null(-1).to_numpy(zero_copy_only=False)
        static = pc.is_null(table["time"]).to_numpy(zero_copy_only=False)
        time = pc.cast(table["time"], pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        timed = (subject >= 0) & ~static
        end = np.where(timed, self.prediction_us[np.maximum(subject, 0)], np.iinfo(np.int64).max)
        reason = np.zeros(len(table), dtype=np.int8)
        if self.window_us is not None:
            reason[timed & (time <= end - self.window_us)] = 2
        reason[timed & (time > end)] = 1
        return subject, time, static, reason

    def origins(self) -> np.ndarray:
        """Each labelled subject's first kept timed event (us), int64 max when none."""
        origin = np.full(len(self.subjects), np.iinfo(np.int64).max, dtype=np.int64)
        for path in self.files:
            columns = _check_data_schema(path)
            for table, _ in _batches(path, columns):
                subject, time, static, reason = self._classify(table)
                kept = (reason == 0) & (subject >= 0) & ~static
                np.minimum.at(origin, subject[kept], time[kept])
        return origin

    def batches(self):
        origin = self.origins()
        reasons = list(self.drops.reasons)
        for file_index, path in enumerate(self.files):
            columns = _check_data_schema(path)
            for table, start in _batches(path, columns):
                subject, time, static, reason = self._classify(table)
                row = np.arange(start, start + len(table), dtype=np.int64)
                locator = Locator([str(path)], np.zeros(len(table), np.int32), row)
                for code, name in enumerate(reasons, start=1):
                    self.drops.add(name, locator, np.flatnonzero(reason == code))
                keep = np.flatnonzero(reason == 0)
                kept = table.take(pa.array(keep))
                self.format_counts["static_rows"] += int(static[keep].sum())
                text_only = pc.and_(pc.is_null(kept["numeric_value"]), pc.is_valid(kept["text_value"]))
                self.format_counts["text_value_not_read"] += pc.sum(pc.cast(text_only, pa.int64())).as_py() or 0
                # static rows and subjects without a label (ingest counts those) at minute 0;
                # a subject with static rows only has no origin
                first = origin[np.maximum(subject[keep], 0)]
                at_origin = static[keep] | (subject[keep] < 0) | (first == np.iinfo(np.int64).max)
                minutes = np.where(at_origin, 0.0, (time[keep] - np.where(at_origin, 0, first)) / US_PER_MINUTE)
                yield (
                    event_batch(
                        _as_string_dictionary(kept["subject_id"]),
                        pa.array(minutes, pa.float64()),
                        pc.dictionary_encode(kept["code"]),
                        pc.cast(kept["numeric_value"], pa.float64()),
                    ),
                    Locator(locator.files, locator.file_index[keep], row[keep]),
                )


def _as_string_dictionary(ids: pa.ChunkedArray) -> pa.DictionaryArray:
    """int64 subject ids as a dictionary of their strings: each distinct id is turned
    into text once, not once per row (ids repeat hundreds of times)."""
    encoded = pc.dictionary_encode(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
    return pa.DictionaryArray.from_arrays(encoded.indices, pc.cast(encoded.dictionary, pa.string()))


def source(name: str, events: Path, labels_csv: Path, data: dict) -> EventSource:
    return MEDS(events, labels_csv, data["observation_window_hours"])


def read_labels(labels: str) -> pa.Table:
    """The task's label rows (subject_id, prediction_time, boolean_value), one per subject."""
    meds = _schemas()
    tables = []
    for path in _parquet_files(Path(labels), "labels"):
        table = _align(meds.LabelSchema, pq.read_table(path), path, "label")
        if "boolean_value" not in table.column_names:
            raise InputError(f"MEDS label file {path}: no column 'boolean_value' (a binary task is needed)")
        table = table.select(["subject_id", "prediction_time", "boolean_value"])
        tables.append(table.append_column("file", pa.array([str(path)] * len(table))))
    table = pa.concat_tables(tables)
    counts = pc.value_counts(table["subject_id"])
    twice = pc.filter(counts, pc.greater(pc.struct_field(counts, "counts"), 1))
    if len(twice):
        subject = pc.struct_field(twice, "values")[0].as_py()
        files = sorted(set(table.filter(pc.equal(table["subject_id"], subject))["file"].to_pylist()))
        raise InputError(
            f"MEDS label file {', '.join(files)}, column 'subject_id': subject {subject} has "
            f"{pc.struct_field(twice, 'counts')[0].as_py()} label rows ({len(twice)} such subjects); this pipeline "
            "predicts once per subject: keep one prediction time per subject in the task"
        )
    return table


def read_splits(root: Path) -> pa.Table:
    meds = _schemas()
    path = root / meds.subject_splits_filepath
    table = _align(meds.SubjectSplitSchema, pq.read_table(path), path, "subject splits")
    names = pc.utf8_lower(table["split"])
    index = pc.index_in(names, value_set=pa.array(list(SPLIT_ALIASES)))
    bad = pc.is_null(index).to_numpy(zero_copy_only=False)
    if bad.any():
        shown = sorted(set(table["split"].filter(pa.array(bad)).to_pylist()))[:5]
        raise InputError(
            f"MEDS subject splits file {path}, column 'split': split name(s) {', '.join(map(repr, shown))} "
            "(expected train, tuning or held_out)"
        )
    split = pa.array(list(SPLIT_ALIASES.values())).take(index)
    order = pc.sort_indices(table, [("subject_id", "ascending")])
    subject, split = table["subject_id"].take(order).to_numpy(), split.take(order).to_numpy(zero_copy_only=False)
    conflict = np.flatnonzero((subject[1:] == subject[:-1]) & (split[1:] != split[:-1]))
    if len(conflict):
        i = conflict[0]
        raise InputError(
            f"MEDS subject splits file {path}, column 'subject_id': subject {subject[i]} is in two splits "
            f"({split[i]} and {split[i + 1]})"
        )
    return pa.table({"patient_id": pc.cast(pa.array(subject), pa.string()), "split": pa.array(split, pa.string())})


def write_labels(name: str, events: Path, labels: str | None, out: str, splits_out: str | None, data: dict) -> dict:
    if not labels:
        raise InputError("data.format meds: data.labels must name the task's label file or directory")
    data_files(events)
    table = read_labels(labels)
    splits = read_splits(events) if splits_out else None
    result = pa.table(
        {
            "patient_id": pc.cast(table["subject_id"], pa.string()),
            "label": pc.cast(pc.cast(table["boolean_value"], pa.int8()), pa.string()),
            "prediction_time": pc.strftime(table["prediction_time"], "%Y-%m-%dT%H:%M:%S"),
        }
    )
    write_csv(result, out)
    if splits is not None:
        write_csv(splits, splits_out)
    return {"patients": len(result), **({"split_rows": len(splits)} if splits is not None else {})}


def write_predictions(predictions: str | Path, labels_csv: str | Path, out: str | Path, threshold: float = 0.5) -> int:
    """A run's test predictions in the MEDS label-with-predictions layout (`subject_id,
    prediction_time, boolean_value, predicted_boolean_value, predicted_boolean_probability`),
    which `meds-evaluation` scores."""
    table = pq.read_table(predictions)
    labels = read_table(labels_csv, "labels", {"patient_id": "patient_id", "prediction_time": "prediction_time"})
    index = pc.index_in(table["patient_id"], value_set=labels["patient_id"])
    if index.null_count:
        raise InputError(f"predictions {predictions}: {index.null_count} patient(s) are not in {labels_csv}")
    probability = pc.cast(table["probability"], pa.float32())
    result = pa.table(
        {
            "subject_id": pc.cast(table["patient_id"], pa.int64()),
            "prediction_time": pc.cast(labels["prediction_time"].take(index), pa.timestamp("us")),
            "boolean_value": pc.cast(table["label"], pa.bool_()),
            "predicted_boolean_value": pc.greater_equal(probability, threshold),
            "predicted_boolean_probability": probability,
        }
    )
    with atomic_path(out) as tmp:
        pq.write_table(result, tmp)
    return len(result)


def predictions_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="seqsetvae meds-predictions", description=write_predictions.__doc__.splitlines()[0]
    )
    parser.add_argument("--predictions", required=True, help="the run's predictions Parquet (evaluate)")
    parser.add_argument("--labels", required=True, help="labels CSV of `seqsetvae labels` (prediction times)")
    parser.add_argument("--out", required=True, help="MEDS predictions Parquet to write")
    args = parser.parse_args(argv)
    n = write_predictions(args.predictions, args.labels, args.out)
    print(f"meds-predictions: {n} test predictions -> {args.out}")
    return 0
