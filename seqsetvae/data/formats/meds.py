"""MEDS (Medical Event Data Standard, `meds` 0.4): a MEDS root and a task's labels.

    <root>/data/**/*.parquet                subject_id, time, code, numeric_value[, ...]
    <root>/metadata/subject_splits.parquet  subject_id, split   (optional)
    data.labels: a label file or directory  subject_id, prediction_time, boolean_value

Files are checked against the `meds` package's schemas. Codes are the variables.

A **sample** is a label row: (subject, prediction time). A subject may have several
(ACES triggers on every admission); its samples share the subject's history up to each
one's time. A sample's id is the subject id when every subject has one label row, else
`subject_id@prediction_time` (ISO seconds); the labels CSV keeps `subject_id`, so
splits are drawn by subject (no subject's samples in two splits). The prediction time
ends the sample's observation, inclusive as MEDS defines it (`data may be used up to
and including this time`); with `data.observation_window_hours` W only the window
`(prediction_time - W, prediction_time]` is kept. Each data row is written once per
sample whose observation holds it (vectorised: two searches per batch, then one
repeat); the copies beyond the first are counted in qc.json's `rows_copied`. Times
become minutes from the sample's time origin: its first timed event that is kept (so
every sample's first set is at minute 0, as with "minutes since admission" of the ICU
formats).

- Events without a value (numeric_value null: diagnoses, procedures, orders, admission
  and transfer codes; rows with a `text_value` only, whose text is not read) are kept
  as events of their code with a null value (z = 0 in the shards: "this was
  recorded"), counted in qc.json's `rows_without_value` and `format_counts`.
- Static rows (time null, e.g. sex, ethnicity) are kept at the subject's time origin,
  so they join its first set; counted in `format_counts.static_rows`.
- Rows dropped here (in no sample's observation): `after_prediction_time` (after the
  subject's last prediction time), `outside_observation_window`.

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
CSV_BYTES_PER_ROW = 26
# the labels CSV `seqsetvae labels` writes for MEDS: one row per sample
LABEL_CSV_COLUMNS = {
    "patient_id": "patient_id",
    "prediction_time": "prediction_time",
    "subject_id": "subject_id",
}  # a typical long event CSV row: AUTO_PARTITION_BYTES ~ 2.5M rows


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
        labels = read_table(labels_csv, "labels", LABEL_CSV_COLUMNS)
        subjects = labels["subject_id"]
        prediction_us = pc.cast(pc.cast(labels["prediction_time"], pa.timestamp("us")), pa.int64()).to_numpy()
        subject = pc.cast(subjects, pa.int64()).to_numpy()
        order = np.lexsort((prediction_us, subject))  # samples by (subject, prediction time)
        self.sample_ids = labels["patient_id"].take(pa.array(order)).combine_chunks()
        self.sample_time = prediction_us[order]
        self.subjects, self.first_sample = np.unique(subject[order], return_index=True)
        self.end_sample = np.append(self.first_sample[1:], len(order))
        # halvings that find a time among any subject's samples
        most = int((self.end_sample - self.first_sample).max(initial=0))
        self.search_steps = int(np.ceil(np.log2(most + 1)))
        self.window_us = None if window_hours is None else int(round(window_hours * 60 * US_PER_MINUTE))
        self.drops = Drops({"after_prediction_time": "time", "outside_observation_window": "time"})
        self.format_counts = {"static_rows": 0, "text_value_not_read": 0}
        self.rows_copied = 0

    def paths(self) -> list[Path]:
        return self.files

    def size_bytes(self) -> int:
        """CSV-equivalent size, for data.partitions: auto (Parquet is several times
        smaller than the CSV of its rows; partitions bound ingest's memory by rows),
        times the samples per subject (rows are written once per sample that holds them)."""
        rows = sum(pq.ParquetFile(path).metadata.num_rows for path in self.files)
        return int(rows * CSV_BYTES_PER_ROW * len(self.sample_time) / max(len(self.subjects), 1))

    def _samples_of_rows(self, table: pa.Table):
        """Per row: (the first and one-past-the-last sample holding it, time in us,
        static row, reason code 0 kept / 1..2 dropped: the order of `self.drops`).

        A subject's samples are consecutive and sorted by prediction time, so the ones
        whose observation holds a row at time t are a run: from the first with
        prediction time >= t to the last with prediction time < t + W."""
        ids = table["subject_id"].to_numpy(zero_copy_only=False)
        at = np.minimum(np.searchsorted(self.subjects, ids), max(len(self.subjects) - 1, 0))
        labelled = (self.subjects[at] == ids) if len(self.subjects) else np.zeros(len(ids), bool)
        static = pc.is_null(table["time"]).to_numpy(zero_copy_only=False)
        time = pc.cast(table["time"], pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        lo, hi = self.first_sample[at], self.end_sample[at]
        first = self._first_at_or_after(lo, hi, time)
        last = hi if self.window_us is None else self._first_at_or_after(lo, hi, time + self.window_us)
        first = np.where(static, lo, first)
        last = np.where(static, hi, last)
        first, last = np.where(labelled, first, 0), np.where(labelled, last, 0)
        reason = np.zeros(len(table), dtype=np.int8)
        timed = labelled & ~static
        reason[timed & (last <= first)] = 2  # before every window that reaches past it
        reason[timed & (first >= hi)] = 1  # after the subject's last prediction time
        return labelled, first, last, time, static, reason

    def _first_at_or_after(self, lo, hi, bound):
        """Per row, the first of its subject's samples [lo, hi) (sorted by time) with time
        >= bound, or hi: a binary search of all rows at once, `search_steps` halvings."""
        lo, hi = lo.copy(), hi.copy()
        for _ in range(self.search_steps):
            mid = (lo + hi) // 2
            before = (lo < hi) & (self.sample_time[np.minimum(mid, len(self.sample_time) - 1)] < bound)
            lo, hi = np.where(before, mid + 1, lo), np.where(before | (lo >= hi), hi, mid)
        return lo

    def _expand(self, labelled, first, last, keep):
        """(kept row of each written event, its sample): a row once per sample holding
        it; rows of subjects without a label once, sample -1 (ingest counts them)."""
        copies = np.where(labelled[keep], last[keep] - first[keep], 1)
        rows = np.repeat(keep, copies)
        offset = np.arange(len(rows)) - np.repeat(np.cumsum(copies) - copies, copies)
        sample = np.where(labelled[rows], first[rows] + offset, -1)
        return rows, sample

    def origins(self) -> np.ndarray:
        """Each sample's first kept timed event (us), int64 max when none."""
        origin = np.full(len(self.sample_time), np.iinfo(np.int64).max, dtype=np.int64)
        for path in self.files:
            columns = _check_data_schema(path)
            for table, _ in _batches(path, columns):
                labelled, first, last, time, static, reason = self._samples_of_rows(table)
                rows, sample = self._expand(labelled, first, last, np.flatnonzero((reason == 0) & labelled & ~static))
                np.minimum.at(origin, sample, time[rows])
        return origin

    def batches(self):
        origin = self.origins()
        reasons = list(self.drops.reasons)
        for file_index, path in enumerate(self.files):
            columns = _check_data_schema(path)
            for table, start in _batches(path, columns):
                labelled, first, last, time, static, reason = self._samples_of_rows(table)
                row = np.arange(start, start + len(table), dtype=np.int64)
                locator = Locator([str(path)], np.zeros(len(table), np.int32), row)
                for code, name in enumerate(reasons, start=1):
                    self.drops.add(name, locator, np.flatnonzero(reason == code))
                keep = np.flatnonzero(reason == 0)
                kept = table.take(pa.array(keep))
                self.format_counts["static_rows"] += int(static[keep].sum())
                text_only = pc.and_(pc.is_null(kept["numeric_value"]), pc.is_valid(kept["text_value"]))
                self.format_counts["text_value_not_read"] += pc.sum(pc.cast(text_only, pa.int64())).as_py() or 0
                rows, sample = self._expand(labelled, first, last, keep)
                self.rows_copied += len(rows) - len(keep)
                # static rows and subjects without a label (ingest counts those) at minute 0;
                # a sample with static rows only has no origin
                base = origin[np.maximum(sample, 0)]
                at_origin = static[rows] | (sample < 0) | (base == np.iinfo(np.int64).max)
                minutes = np.where(at_origin, 0.0, (time[rows] - np.where(at_origin, 0, base)) / US_PER_MINUTE)
                written = table.take(pa.array(rows))
                ids = _patient_ids(written["subject_id"], sample, self.sample_ids)
                yield (
                    event_batch(
                        ids,
                        pa.array(minutes, pa.float64()),
                        pc.dictionary_encode(written["code"]),
                        pc.cast(written["numeric_value"], pa.float64()),
                    ),
                    Locator(locator.files, locator.file_index[rows], row[rows]),
                )


def _patient_ids(subject_ids: pa.Array, sample: np.ndarray, sample_ids: pa.Array) -> pa.DictionaryArray:
    """Each written row's patient id as a dictionary array: its sample's id, or, for a
    subject without a label (sample -1), the subject id (ingest counts it)."""
    unlabelled = sample < 0
    # the dictionary holds the batch's samples only: ingest reads it as the ids present
    used = np.zeros(len(sample_ids), dtype=bool)
    used[sample[~unlabelled]] = True
    present = np.flatnonzero(used)
    position = np.cumsum(used) - 1  # each present sample's place in the dictionary
    indices = position[sample[~unlabelled]]
    dictionary = sample_ids.take(pa.array(present))
    if not unlabelled.any():
        return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), dictionary)
    others = _as_string_dictionary(pc.filter(subject_ids, pa.array(unlabelled)))
    codes = np.empty(len(sample), dtype=np.int32)
    codes[~unlabelled] = indices
    codes[unlabelled] = others.indices.to_numpy(zero_copy_only=False) + len(present)
    return pa.DictionaryArray.from_arrays(
        pa.array(codes, pa.int32()), pa.concat_arrays([dictionary, others.dictionary])
    )


def _as_string_dictionary(ids: pa.ChunkedArray) -> pa.DictionaryArray:
    """int64 subject ids as a dictionary of their strings: each distinct id is turned
    into text once, not once per row (ids repeat hundreds of times)."""
    encoded = pc.dictionary_encode(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
    return pa.DictionaryArray.from_arrays(encoded.indices, pc.cast(encoded.dictionary, pa.string()))


def source(name: str, events: Path, labels_csv: Path, data: dict) -> EventSource:
    return MEDS(events, labels_csv, data["observation_window_hours"])


def read_labels(labels: str) -> pa.Table:
    """The task's label rows (subject_id, prediction_time, boolean_value): one per sample;
    a subject may have several, at different prediction times."""
    meds = _schemas()
    tables = []
    for path in _parquet_files(Path(labels), "labels"):
        table = pq.read_table(path)
        if "boolean_value" not in table.column_names:
            raise InputError(f"MEDS label file {path}: no column 'boolean_value' (a binary task is needed)")
        # the columns this pipeline reads (ACES writes the other value columns all null)
        wanted = [c for c in ("subject_id", "prediction_time", "boolean_value") if c in table.column_names]
        table = _align(meds.LabelSchema, table.select(wanted), path, "label")
        table = table.select(["subject_id", "prediction_time", "boolean_value"])
        tables.append(table.append_column("file", pa.array([str(path)] * len(table))))
    table = pa.concat_tables(tables)
    keys = ["subject_id", "prediction_time"]
    counts = table.group_by(keys).aggregate([([], "count_all")])
    twice = counts.filter(pc.greater(counts["count_all"], 1))
    if len(twice):
        subject, time = twice["subject_id"][0].as_py(), twice["prediction_time"][0].as_py()
        same = pc.and_(
            pc.equal(table["subject_id"], subject), pc.equal(table["prediction_time"], twice["prediction_time"][0])
        )
        files = sorted(set(table.filter(same)["file"].to_pylist()))
        raise InputError(
            f"MEDS label file {', '.join(files)}, columns 'subject_id', 'prediction_time': subject {subject} has "
            f"{twice['count_all'][0].as_py()} label rows at {time} ({len(twice)} such samples); one label per "
            "(subject, prediction time)"
        )
    return table


def sample_ids(table: pa.Table) -> pa.Array:
    """The subject id when every subject has one label row, else `subject_id@time`."""
    subjects = pc.cast(table["subject_id"], pa.string())
    if pc.count_distinct(table["subject_id"]).as_py() == len(table):
        return subjects.combine_chunks() if isinstance(subjects, pa.ChunkedArray) else subjects
    seconds = pc.cast(pc.cast(table["prediction_time"], pa.timestamp("us")), pa.timestamp("s"), safe=False)
    times = pc.strftime(seconds, "%Y-%m-%dT%H:%M:%S")
    return pc.binary_join_element_wise(subjects, times, "@").combine_chunks()


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
    ids = sample_ids(table)
    if pc.count_distinct(ids).as_py() != len(ids):  # two times within one second
        raise InputError(
            f"MEDS labels {labels}, column 'prediction_time': two prediction times of one subject fall in the same "
            "second; sample ids (subject_id@time) need them a second apart"
        )
    subjects = pc.cast(table["subject_id"], pa.string())
    result = pa.table(
        {
            "patient_id": ids,
            "label": pc.cast(pc.cast(table["boolean_value"], pa.int8()), pa.string()),
            "prediction_time": pc.strftime(table["prediction_time"], "%Y-%m-%dT%H:%M:%S"),
            "subject_id": subjects,
        }
    )
    write_csv(result, out)
    if splits is not None:  # the subjects' splits, one row per sample
        index = pc.index_in(subjects, value_set=splits["patient_id"])
        known = pc.is_valid(index)
        splits = pa.table({"patient_id": pc.filter(ids, known), "split": splits["split"].take(pc.filter(index, known))})
        write_csv(splits, splits_out)
    subjects_n = pc.count_distinct(table["subject_id"]).as_py()
    return {
        "samples": len(result),
        "subjects": subjects_n,
        **({"split_rows": len(splits)} if splits is not None else {}),
    }


def write_predictions(predictions: str | Path, labels_csv: str | Path, out: str | Path, threshold: float = 0.5) -> int:
    """A run's test predictions in the MEDS label-with-predictions layout (`subject_id,
    prediction_time, boolean_value, predicted_boolean_value, predicted_boolean_probability`),
    which `meds-evaluation` scores."""
    table = pq.read_table(predictions)
    labels = read_table(labels_csv, "labels", LABEL_CSV_COLUMNS)
    index = pc.index_in(table["patient_id"], value_set=labels["patient_id"])
    if index.null_count:
        raise InputError(f"predictions {predictions}: {index.null_count} sample(s) are not in {labels_csv}")
    probability = pc.cast(table["probability"], pa.float32())
    result = pa.table(
        {
            "subject_id": pc.cast(labels["subject_id"].take(index), pa.int64()),
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
