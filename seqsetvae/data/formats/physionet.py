"""PhysioNet/CinC Challenge 2012 and 2019 layouts (docs/input_formats.md).

2012 (`physionet2012`): one `Time,Parameter,Value` file per ICU stay in a `set-*`
directory; `Time` is `HH:MM` since admission; the first row `00:00,RecordID,<id>`
names the stay; labels are `In-hospital_death` of `Outcomes-*.txt`. Policies: the
RecordID row is an identifier, not a measurement (`record_id_row`); `-1` is the
challenge's missing marker (`missing_marker`); the general descriptors (Age, Gender,
Height, ICUType, Weight at 00:00) stay events at minute 0, the time-0 inputs the
literature gives its models.

2019 (`physionet2019`): one pipe-separated file per stay with one row per hour
(`ICULOS`); every non-missing cell of a measurement column is an event at minute
`60 * ICULOS`; the static descriptors (Age, Gender, Unit1, Unit2, HospAdmTime) are one
event each at the stay's first row, their repeats on later rows are counted
(`repeated_static_descriptor`). Two tasks:

- early prediction (`data.prediction_hour` W): the first W hourly rows of a stay are
  its input (`after_prediction_hour` counts the later rows' cells) and the label is
  `SepsisLabel` 1 at any later row. Stays with fewer than W rows
  (`stay_shorter_than_prediction_hour`) or with `SepsisLabel` 1 within their first W
  rows (`sepsis_by_prediction_hour`) are not in the cohort: their cells are counted
  under those reasons and the stays in `cohort` of qc.json.
- sepsis at any hour (`prediction_hour` null): the whole stay, cut so that no cell of
  the hour from which `SepsisLabel` is 1, or of any later hour, becomes an event
  (`after_label_onset`). No measured value of the septic hours reaches the model, but
  where the stay ends does: a septic stay stops at its onset, every other stay runs to
  discharge, so its length and last hours give the label away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from seqsetvae.data.csvio import canonical_ids, parse_numbers, row_examples
from seqsetvae.data.formats import Drops, EventSource, Gather, Locator, write_csv
from seqsetvae.errors import InputError

P2012_COLUMNS = ("Time", "Parameter", "Value")
P2012_LABEL = "In-hospital_death"
P2019_TIME, P2019_LABEL = "ICULOS", "SepsisLabel"
P2019_STATIC = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")


def _files(directory: Path, suffix: str, what: str) -> list[Path]:
    if not directory.is_dir():
        raise InputError(f"{what} directory {directory}: not found (data.events)")
    files = sorted(p for p in directory.iterdir() if p.name.lower().endswith(suffix) and p.is_file())
    if not files:
        raise InputError(f"{what} directory {directory}: no {suffix} files in it (data.events)")
    return files


def _read(path: Path, what: str, **options) -> pa.Table:
    try:
        return pacsv.read_csv(path, **options)
    except pa.ArrowKeyError:  # a column asked for by include_columns
        wanted = options["convert_options"].include_columns
        raise InputError(f"{what} file {path}: missing column {', '.join(map(repr, wanted))}") from None
    except (pa.ArrowInvalid, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{what} file {path}: cannot be read ({message[:160]})") from None


def _require(path: Path, what: str, names: list[str], required) -> None:
    missing = [name for name in required if name not in names]
    if missing:
        raise InputError(
            f"{what} file {path}: missing column {', '.join(map(repr, missing))}; the header has "
            f"{', '.join(map(repr, names[:12]))}"
        )


# ---------------------------------------------------------------------------- 2012


def _p2012_table(path: Path) -> dict[str, pa.Array]:
    strings = pacsv.ConvertOptions(column_types=dict.fromkeys(P2012_COLUMNS, pa.string()), strings_can_be_null=False)
    table = _read(path, "PhysioNet 2012", convert_options=strings)
    _require(path, "PhysioNet 2012", table.column_names, P2012_COLUMNS)
    return {name: table[name].combine_chunks() for name in P2012_COLUMNS}


def _record_id(path: Path, table: dict[str, pa.Array]) -> str:
    is_id = pc.equal(pc.utf8_trim_whitespace(table["Parameter"]), "RecordID")
    ids = canonical_ids(table["Value"].filter(is_id))
    if len(ids) == 0 or not ids[0].as_py():
        raise InputError(f"PhysioNet 2012 file {path}: no RecordID row (column 'Parameter'), so the stay has no id")
    return ids[0].as_py()


class PhysioNet2012(EventSource):
    format = "physionet2012"
    columns = {"patient_id": "RecordID", "time": "Time", "variable": "Parameter", "value": "Value"}

    def __init__(self, directory: Path):
        self.files = _files(directory, ".txt", "PhysioNet 2012")
        self.drops = Drops({"record_id_row": "Parameter", "missing_marker": "Value"})

    def paths(self) -> list[Path]:
        return self.files

    def batches(self):
        gather = Gather()
        for path in self.files:
            table = _p2012_table(path)
            record_id = _record_id(path, table)
            parameter = pc.utf8_trim_whitespace(table["Parameter"])
            value = pc.utf8_trim_whitespace(table["Value"])
            row = np.arange(1, len(parameter) + 1, dtype=np.int64)
            id_row = pc.equal(parameter, "RecordID").to_numpy(zero_copy_only=False)
            marker = pc.match_substring_regex(value, r"^-1(\.0*)?$").to_numpy(zero_copy_only=False) & ~id_row
            locator = _one_file(path, row)
            self.drops.add("record_id_row", locator, np.flatnonzero(id_row))
            self.drops.add("missing_marker", locator, np.flatnonzero(marker))
            keep = np.flatnonzero(~id_row & ~marker)
            time = _hh_mm_minutes(pc.utf8_trim_whitespace(table["Time"]).take(pa.array(keep)))
            names, index = _dictionary(parameter.take(pa.array(keep)))
            codes = gather.variable_codes(names)[index]
            yield from gather.add(record_id, str(path), time, codes, value.take(pa.array(keep)), row[keep])
        yield from gather.rest()


def _one_file(path: Path, row: np.ndarray) -> Locator:
    return Locator([str(path)], np.zeros(len(row), np.int32), row)


def _dictionary(strings: pa.Array) -> tuple[list[str], np.ndarray]:
    encoded = pc.dictionary_encode(strings)
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False)


def _hh_mm_minutes(times: pa.Array) -> pa.Array:
    """`HH:MM` -> minutes as decimal strings; an empty cell stays empty (missing) and
    anything else becomes `not HH:MM`, for the shared validation to count."""
    parts = pc.extract_regex(times, r"^(?P<h>[0-9]+):(?P<m>[0-5][0-9])$")
    valid = pc.is_valid(parts)
    hours = pc.cast(pc.struct_field(parts, "h"), pa.int64())
    minutes = pc.cast(pc.struct_field(parts, "m"), pa.int64())
    total = pc.cast(pc.add(pc.multiply(hours, 60), minutes), pa.string())
    other = pc.if_else(pc.equal(times, ""), times, pa.scalar("not HH:MM"))
    return pc.if_else(valid, total, other)


# ---------------------------------------------------------------------------- 2019


def _p2019_matrix(path: Path) -> tuple[list[str], np.ndarray]:
    table = _read(path, "PhysioNet 2019", parse_options=pacsv.ParseOptions(delimiter="|"))
    _require(path, "PhysioNet 2019", table.column_names, (P2019_TIME, P2019_LABEL))
    columns = []
    for name in table.column_names:  # a loop over the file's ~40 columns
        column = table[name]
        if pa.types.is_null(column.type):
            columns.append(np.full(len(table), np.nan))
            continue
        try:
            columns.append(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            _, problem = parse_numbers(column.combine_chunks().cast(pa.string()))
            bad = np.flatnonzero(problem == 2)  # not numeric (NaN and empty cells are missing values)
            raise InputError(
                f"PhysioNet 2019 file {path}: rows {row_examples(bad + 1)}, column {name!r}: not a number "
                f"({column[int(bad[0])].as_py()!r}); cells are numbers or NaN"
            ) from None
    return table.column_names, np.column_stack(columns) if columns else np.zeros((len(table), 0))


EXCLUDED = ("stay_shorter_than_prediction_hour", "sepsis_by_prediction_hour")


def early_prediction(sepsis_label: np.ndarray, hour: int) -> tuple[str | None, int]:
    """(exclusion reason or None, label) of one stay for prediction at `hour`: the stay
    needs `hour` rows without sepsis; its label is sepsis at any later row."""
    if len(sepsis_label) < hour:
        return EXCLUDED[0], 0
    if (sepsis_label[:hour] == 1).any():
        return EXCLUDED[1], 0
    return None, int((sepsis_label[hour:] == 1).any())


class PhysioNet2019(EventSource):
    format = "physionet2019"
    columns = {"patient_id": "file name", "time": P2019_TIME, "variable": "column", "value": "cell"}

    def __init__(self, directory: Path, prediction_hour: int | None = None):
        self.files = _files(directory, ".psv", "PhysioNet 2019")
        self.prediction_hour = prediction_hour
        reasons = {"after_label_onset": P2019_LABEL, "repeated_static_descriptor": "static descriptor"}
        if prediction_hour is not None:
            reasons = {
                "after_prediction_hour": P2019_TIME,
                **dict.fromkeys(EXCLUDED, P2019_LABEL),
                "repeated_static_descriptor": "static descriptor",
            }
            self.cohort = {
                "prediction_hour": prediction_hour,
                "stays": 0,
                "eligible": 0,
                "positive": 0,
                "excluded": dict.fromkeys(EXCLUDED, 0),
            }
        self.drops = Drops(reasons)

    def paths(self) -> list[Path]:
        return self.files

    def _cut(self, time, label, row, locator) -> np.ndarray:
        """bool [cells]: the cells that are not the task's input, counted by reason."""
        if self.prediction_hour is None:
            onset = time[label == 1].min(initial=np.inf)
            # the onset hour and every later hour: unknown to a model predicting sepsis
            after = (time[row] >= onset) | (np.isnan(time[row]) & np.isfinite(onset))
            self.drops.add("after_label_onset", locator, np.flatnonzero(after))
            return after
        excluded, positive = early_prediction(label, self.prediction_hour)
        self.cohort["stays"] += 1
        if excluded is not None:
            self.cohort["excluded"][excluded] += 1
            self.drops.add(excluded, locator, np.arange(len(row)))
            return np.ones(len(row), dtype=bool)
        self.cohort["eligible"] += 1
        self.cohort["positive"] += positive
        after = row >= self.prediction_hour
        self.drops.add("after_prediction_hour", locator, np.flatnonzero(after))
        return after

    def batches(self):
        gather = Gather()
        for path in self.files:
            names, matrix = _p2019_matrix(path)
            time = matrix[:, names.index(P2019_TIME)] * 60.0
            label = matrix[:, names.index(P2019_LABEL)]
            event_columns = [i for i, name in enumerate(names) if name not in (P2019_TIME, P2019_LABEL)]
            row, column = np.nonzero(~np.isnan(matrix[:, event_columns]))
            column = np.asarray(event_columns, dtype=np.int64)[column]
            static = np.isin(column, [names.index(n) for n in P2019_STATIC if n in names])
            row_number = row.astype(np.int64) + 1
            locator = _one_file(path, row_number)
            cut = self._cut(time, label, row, locator)
            repeat = static & (row > 0) & ~cut
            self.drops.add("repeated_static_descriptor", locator, np.flatnonzero(repeat))
            keep = np.flatnonzero(~cut & ~repeat)
            # a static descriptor's event is at the stay's first hour
            codes = gather.variable_codes(names)[column[keep]]
            yield from gather.add(
                path.name[: -len(".psv")],
                str(path),
                time[row[keep]],
                codes,
                matrix[row[keep], column[keep]],
                row_number[keep],
            )
        yield from gather.rest()


# -------------------------------------------------------------------------- labels


def p2019_stay_labels(files: list[Path], hour: int | None) -> tuple[list[str], list[int], dict]:
    """(ids, labels, cohort counts) of the stays in the task, from each file's label column
    only: sepsis at a row after `hour` (stays the task excludes left out, counted by
    reason), or at any hour when `hour` is None."""
    ids, labels, excluded = [], [], dict.fromkeys(EXCLUDED, 0)
    only_label = pacsv.ConvertOptions(include_columns=[P2019_LABEL], column_types={P2019_LABEL: pa.float64()})
    for path in files:  # one label per file
        sepsis = _read(
            path, "PhysioNet 2019", parse_options=pacsv.ParseOptions(delimiter="|"), convert_options=only_label
        )[P2019_LABEL].to_numpy()
        reason, label = early_prediction(sepsis, hour) if hour is not None else (None, int((sepsis == 1).any()))
        if reason is not None:  # not in the cohort; ingest counts its cells and the stay
            excluded[reason] += 1
            continue
        ids.append(path.name[: -len(".psv")])
        labels.append(label)
    return ids, labels, {"stays": len(files), "eligible": len(ids), "positive": int(sum(labels)), **excluded}


def source(name: str, events: Path, labels_csv: Path, data: dict) -> EventSource:
    return PhysioNet2012(events) if name == "physionet2012" else PhysioNet2019(events, data["prediction_hour"])


def write_labels(name: str, events: Path, labels: str | None, out: str, splits_out: str | None, data: dict) -> dict:
    if name == "physionet2012":
        if not labels:
            raise InputError("data.format physionet2012: data.labels must name the Outcomes-*.txt file of the set")
        ints = pacsv.ConvertOptions(column_types={"RecordID": pa.string(), P2012_LABEL: pa.string()})
        table = _read(Path(labels), "PhysioNet 2012 outcomes", convert_options=ints)
        _require(Path(labels), "PhysioNet 2012 outcomes", table.column_names, ("RecordID", P2012_LABEL))
        result = pa.table({"patient_id": canonical_ids(table["RecordID"]), "label": table[P2012_LABEL]})
    else:
        ids, labels, counts = p2019_stay_labels(_files(events, ".psv", "PhysioNet 2019"), data["prediction_hour"])
        result = pa.table({"patient_id": pa.array(ids, pa.string()), "label": pa.array(labels, pa.int8())})
        if data["prediction_hour"] is not None:
            write_csv(result, out)
            return counts
    write_csv(result, out)
    return {"patients": len(result)}
