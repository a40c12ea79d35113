"""`seqsetvae ingest`: validation policies, QC balance, partitions, atomic failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqsetvae.cli import main as cli
from seqsetvae.data import formats as formats_module
from seqsetvae.data import ingest as ingest_module
from seqsetvae.data.splits import make_splits
from seqsetvae.errors import InputError
from seqsetvae.settings import load_settings

HEADER = "patient_id,minute,variable,value\n"


def run(tmp_path, events, labels, data=None, splits=None, expect_error=None):
    """Write the files, split, ingest; return (qc, events table, patients table)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    events_paths = []
    for i, text in enumerate(events if isinstance(events, list) else [events]):
        path = tmp_path / f"events{i}.csv"
        path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
        events_paths.append(path)
    labels_path = tmp_path / "labels.csv"
    labels_path.write_text(labels)
    # these cohorts are a few patients, too small for a training run's splits; and each
    # test counts one policy's drops (the limit on their total share has its own test)
    defaults = {"incomplete_splits": "warn", "max_dropped_fraction": 1.0}
    settings = load_settings({"data": {**defaults, **(data or {})}})
    splits_path = tmp_path / "splits.csv"
    if splits is None:
        make_splits(settings, labels_path, None, splits_path)
    else:
        splits_path.write_text(splits)
    out = tmp_path / "events_out"
    if expect_error:
        with pytest.raises(InputError, match=expect_error) as error:
            ingest_module.ingest(settings, events_paths, labels_path, splits_path, out, 1)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".events_out")]
        return str(error.value)
    qc = ingest_module.ingest(settings, events_paths, labels_path, splits_path, out, 1)
    assert json.loads((out / "qc.json").read_text()) == qc
    return qc, read_events(out), pq.read_table(out / "patients.parquet").to_pandas()


def read_events(out):
    parts = sorted(out.glob("part-*.arrow"))
    tables = []
    for i, path in enumerate(parts):
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        assert table.schema.names == ["patient_id", "time", "variable", "value", "split"]
        assert [str(t) for t in table.schema.types] == ["string", "double", "string", "double", "string"]
        frame = table.to_pandas()
        frame["part"] = i
        tables.append(frame)
    return pd.concat(tables, ignore_index=True)


def assert_balanced(qc):
    assert qc["rows_in"] == qc["rows_kept"] + sum(qc["rows_dropped"].values())
    assert qc["patients_in"] == qc["patients_kept"] + sum(qc["patients_dropped"].values())
    assert qc["labels_in"] == qc["labels_kept"] + sum(qc["labels_dropped"].values())
    assert qc["rows_kept"] == sum(s["events"] for s in qc["by_split"].values())
    assert qc["patients_kept"] == sum(s["patients"] for s in qc["by_split"].values())


@pytest.mark.parametrize("partitions", [4, 100])  # 100: more than the patients, the sorting split
def test_round_trip_partitions_hold_exactly_the_rows(tmp_path, synthetic_raw, monkeypatch, partitions):
    events_csv, labels_csv, _ = synthetic_raw
    monkeypatch.setattr(formats_module, "BLOCK_BYTES", 1 << 16)  # many blocks per file
    settings = load_settings({"data": {"partitions": partitions, "incomplete_splits": "warn"}})
    make_splits(settings, labels_csv, None, tmp_path / "splits.csv")
    out = tmp_path / "events"
    args = [
        "ingest",
        "--events",
        str(events_csv),
        "--labels",
        str(labels_csv),
        "--splits",
        str(tmp_path / "splits.csv"),
        "--out",
        str(out),
        "--settings",
        json.dumps(settings),
        "--threads",
        "2",
    ]
    assert cli(args) == 0
    qc = json.loads((out / "qc.json").read_text())
    got = read_events(out)
    raw = pd.read_csv(events_csv, dtype={"patient_id": str})
    expected = raw.sort_values(["patient_id", "minute", "variable"]).reset_index(drop=True)
    assert qc["rows_in"] == qc["rows_kept"] == len(raw) == len(got)
    assert_balanced(qc)
    # every patient in exactly one partition, rows grouped and sorted within it
    assert (got.groupby("patient_id")["part"].nunique() == 1).all()
    assert len({p for p in got["part"]}) > 1
    for _, part in got.groupby("part"):
        assert part.equals(part.sort_values(["patient_id", "time", "variable"]))
    got = got.sort_values(["patient_id", "time", "variable"]).reset_index(drop=True)
    assert got["patient_id"].tolist() == expected["patient_id"].tolist()
    assert np.array_equal(got["time"].to_numpy(), expected["minute"].to_numpy(dtype=float))
    assert got["variable"].tolist() == expected["variable"].tolist()
    assert np.array_equal(got["value"].to_numpy(), expected["value"].to_numpy())
    splits = pd.read_csv(tmp_path / "splits.csv", dtype=str).set_index("patient_id")["split"]
    assert (got["split"].to_numpy() == splits[got["patient_id"]].to_numpy()).all()
    # patients.parquet agrees with the partitions
    patients = pq.read_table(out / "patients.parquet").to_pandas().set_index("patient_id")
    labels = pd.read_csv(labels_csv, dtype={"patient_id": str}).set_index("patient_id")["in_hospital_mortality"]
    assert patients["label"].dtype == np.int8
    assert (patients["label"] == labels[patients.index]).all()
    assert patients["n_events"].to_dict() == got.groupby("patient_id").size().to_dict()
    assert patients["n_sets"].to_dict() == got.groupby("patient_id")["time"].nunique().to_dict()
    assert patients["partition"].to_dict() == got.groupby("patient_id")["part"].first().to_dict()
    assert qc["partitions"] == partitions == len(list(out.glob("part-*.arrow")))


def test_messy_input_every_row_counted(tmp_path):
    events = HEADER + (
        "1,0,HR,80\n"  # 1 kept
        "1,0,HR,80\n"  # 2 duplicate_row
        "1,0,SBP,120\n"  # 3 conflicting: merged into mean 125
        "1,0,SBP,130\n"  # 4 conflicting_duplicate_merged
        "1,0,SBP,130\n"  # 5 duplicate_row
        "1.0,60,HR,abc\n"  # 6 value_not_numeric
        "1,60,HR,NaN\n"  # 7 value_not_finite
        "1,60,HR,inf\n"  # 8 value_not_finite
        "1,60,HR,\n"  # 9 value_missing
        "1,x,HR,80\n"  # 10 time_not_numeric
        "1,,HR,80\n"  # 11 time_missing
        "1,nan,HR,80\n"  # 12 time_not_finite
        "1,-5,HR,80\n"  # 13 negative_time
        ",60,HR,80\n"  # 14 patient_id_missing
        "1,60, ,80\n"  # 15 variable_missing
        "9,60,HR,80\n"  # 16 patient_without_label
        "9,70,HR,80\n"  # 17 patient_without_label
        "P-17,30,HR,70\n"  # 18 kept
        " P-17 ,30,Temp,37.5\n"  # 19 kept (id stripped)
        "4,10,HR,abc\n"  # 20 value_not_numeric: patient 4 has no valid event
    )
    labels = "patient_id,in_hospital_mortality\n1,1\n1.0,1\nP-17,0\n3,0\n4,1\n"
    qc, got, patients = run(tmp_path, events, labels, data={"max_invalid_fraction": 1.0})
    assert_balanced(qc)
    assert qc["rows_in"] == 20 and qc["rows_kept"] == 4
    dropped = {k: v for k, v in qc["rows_dropped"].items() if v}
    assert dropped == {
        "duplicate_row": 2,
        "conflicting_duplicate_merged": 1,
        "value_not_numeric": 2,
        "value_not_finite": 2,
        "value_missing": 1,
        "time_not_numeric": 1,
        "time_missing": 1,
        "time_not_finite": 1,
        "negative_time": 1,
        "patient_id_missing": 1,
        "variable_missing": 1,
        "patient_without_label": 2,
    }
    assert qc["patients_in"] == 5 and qc["patients_kept"] == 2
    assert qc["patients_dropped"] == {"patient_without_label": 1, "label_without_events": 1, "no_valid_events": 1}
    assert qc["labels_in"] == 5
    assert qc["labels_dropped"] == {"duplicate_label_row": 1, "label_without_events": 1, "no_valid_events": 1}
    assert qc["dropped_row_examples"]["value_not_numeric"] == [f"{tmp_path / 'events0.csv'}:{r}" for r in (6, 20)]
    rows = got.drop(columns=["part", "split"]).values.tolist()
    assert rows == [
        ["1", 0.0, "HR", 80.0],
        ["1", 0.0, "SBP", 125.0],
        ["P-17", 30.0, "HR", 70.0],
        ["P-17", 30.0, "Temp", 37.5],
    ]
    assert patients["patient_id"].tolist() == ["1", "P-17"]
    assert patients["n_events"].tolist() == [2, 2] and patients["n_sets"].tolist() == [1, 1]


def test_invalid_share_over_limit_names_rows_and_column(tmp_path):
    good = [f"1,{t},HR,80\n" for t in range(40)]
    bad = ["1,5,HR,abc\n", "1,6,HR,n/a\n"]
    events = [HEADER + "".join(good[:20] + bad + good[20:]), HEADER + "1,1,SBP,1\n1,x,SBP,2\n"]
    message = run(
        tmp_path,
        events,
        "patient_id,in_hospital_mortality\n1,0\n",
        data={"max_invalid_fraction": 0.05},
        expect_error="more than data.max_invalid_fraction",
    )
    assert "3 of 44 rows" in message
    assert f"value_not_numeric: 2 rows, column 'value' (e.g. file {tmp_path / 'events0.csv'} rows 21, 22)" in message
    assert f"time_not_numeric: 1 rows, column 'minute' (e.g. file {tmp_path / 'events1.csv'} rows 2)" in message


def test_negative_times_are_dropped_not_invalid(tmp_path):
    events = HEADER + "1,-30,HR,80\n1,-1,HR,81\n1,0,HR,82\n"
    qc, got, _ = run(tmp_path, events, "patient_id,in_hospital_mortality\n1,0\n", data={"max_invalid_fraction": 0})
    assert qc["rows_dropped"]["negative_time"] == 2 and got["value"].tolist() == [82.0]


def test_hours_and_custom_column_names(tmp_path):
    events = "stay,charttime_h,item,val,extra\nA,0.5,HR,80,x\nA,1.25,HR,81,y\nA,0.18333333333333332,HR,82,z\n"
    labels = "stay,died\nA,1\n"
    columns = {"patient_id": "stay", "time": "charttime_h", "variable": "item", "value": "val", "label": "died"}
    qc, got, patients = run(
        tmp_path, events, labels, data={"time_unit": "hours", "columns": columns}, splits="patient_id,split\nA,test\n"
    )
    assert got["time"].tolist() == [11.0, 30.0, 75.0]  # 11/60 h written as a float is 11 minutes
    assert got["split"].tolist() == ["test"] * 3 and qc["by_split"]["test"]["events"] == 3
    assert patients["label"].tolist() == [1]


def test_ids_numeric_looking_or_not_match_across_files(tmp_path):
    events = HEADER + "200001.0,0,HR,80\n 200002 ,0,HR,81\nP-17,0,HR,82\n007,0,HR,83\n"
    labels = "patient_id,in_hospital_mortality\n200001,1\n200002.00,0\nP-17,1\n007,0\n"
    splits = "patient_id,split\n200001.0,train\n200002,valid\nP-17,test\n007,train\n"
    qc, got, patients = run(tmp_path, events, labels, splits=splits)
    assert qc["rows_kept"] == 4 and qc["patients_kept"] == 4
    assert dict(zip(got["patient_id"], got["split"])) == {
        "200001": "train",
        "200002": "valid",
        "P-17": "test",
        "007": "train",
    }
    assert dict(zip(patients["patient_id"], patients["label"])) == {"200001": 1, "200002": 0, "P-17": 1, "007": 0}


def test_unlabeled_events_error_policy_lists_patients(tmp_path):
    events = HEADER + "1,0,HR,80\n9,0,HR,80\nX-2,0,HR,80\n"
    message = run(
        tmp_path,
        events,
        "patient_id,in_hospital_mortality\n1,0\n",
        data={"unlabeled_events": "error"},
        expect_error="events of patients without a label",
    )
    assert "rows 2, 3" in message and "'9', 'X-2'" in message and "column 'patient_id'" in message


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            "patient_id,in_hospital_mortality\n1,0\n2,2\n",
            r"rows 2, column 'in_hospital_mortality': label must be 0 or 1, found '2'",
        ),
        ("patient_id,in_hospital_mortality\n1,yes\n2,0\n", r"rows 1, column 'in_hospital_mortality'.*'yes'"),
        ("patient_id,in_hospital_mortality\n1,0\n2,\n", r"rows 2, column 'in_hospital_mortality'.*found ''"),
        ("patient_id,in_hospital_mortality\n1,0\n2,1\n1.0,1\n", r"conflicting labels for patient '1' \(rows 1 and 3\)"),
        ("patient_id,in_hospital_mortality\n1,0\n ,1\n", r"rows 2, column 'patient_id': empty patient id"),
    ],
)
def test_bad_labels(tmp_path, labels, message):
    text = run(
        tmp_path, HEADER + "1,0,HR,80\n", labels, splits="patient_id,split\n1,train\n2,test\n", expect_error=message
    )
    assert str(tmp_path / "labels.csv") in text


def test_splits_must_cover_labelled_patients_once(tmp_path):
    labels = "patient_id,in_hospital_mortality\n1,0\n2,1\n"
    run(
        tmp_path / "a",
        HEADER + "1,0,HR,80\n",
        labels,
        splits="patient_id,split\n1,train\n",
        expect_error=r"splits.csv, column 'patient_id': 1 labelled patient\(s\) have no split, e.g. '2'",
    )
    run(
        tmp_path / "b",
        HEADER + "1,0,HR,80\n",
        labels,
        splits="patient_id,split\n1,train\n2,test\n1.0,valid\n",
        expect_error=r"splits.csv: rows 1, 3, column 'split': a patient listed twice with different splits, e.g. '1'",
    )
    run(
        tmp_path / "c",
        HEADER + "1,0,HR,80\n",
        labels,
        splits="patient_id,split\n1,train\n2,holdout\n",
        expect_error=r"splits.csv: rows 2, column 'split': expected train, valid or test",
    )


BAD_FILES = {
    "events missing column": (
        "events",
        "patient_id,minute,variable\n1,0,HR\n",
        r"missing column 'value' \(data.columns.value\)",
    ),
    "events misnamed column": (
        "events",
        "patient_id,time,variable,value\n1,0,HR,1\n",
        r"missing column 'minute' \(data.columns.time\)",
    ),
    "events empty": ("events", "", r"is empty"),
    "events binary": ("events", bytes(range(256)) * 20, r"events file .*(cannot be parsed as CSV|missing column)"),
    "events directory": ("events", None, r"is a directory"),
    "labels missing column": (
        "labels",
        "patient_id,mortality\n1,0\n",
        r"missing column 'in_hospital_mortality' \(data.columns.label\)",
    ),
    "labels empty": ("labels", "", r"labels file .* is empty"),
    "splits missing column": ("splits", "patient_id,fold\n1,train\n", r"splits file .* missing column 'split'"),
    "splits missing": ("splits", "missing", r"splits file .*: not found"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_fail_through_cli_without_output(tmp_path, write_text, capsys, case):
    which, content, message = BAD_FILES[case]
    files = {
        "events": write_text("events.csv", HEADER + "1,0,HR,80\n"),
        "labels": write_text("labels.csv", "patient_id,in_hospital_mortality\n1,0\n"),
        "splits": write_text("splits.csv", "patient_id,split\n1,train\n"),
    }
    if content is None:
        files[which] = tmp_path / "a_directory"
        files[which].mkdir()
    elif content == "missing":
        files[which] = tmp_path / "no_such_file.csv"
    else:
        files[which] = write_text(f"bad_{which}.csv", content)
    out = tmp_path / "results" / "events"
    code = cli(
        [
            "ingest",
            "--events",
            str(files["events"]),
            "--labels",
            str(files["labels"]),
            "--splits",
            str(files["splits"]),
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(files[which]) in err
    assert pytest.importorskip("re").search(message, err), err
    assert not out.exists() and not list((tmp_path / "results").glob(".events*"))


def test_missing_events_path_and_no_valid_events(tmp_path):
    labels = "patient_id,in_hospital_mortality\n1,0\n"
    run(
        tmp_path,
        HEADER + "2,0,HR,80\n",
        labels,
        expect_error=r"no valid event of a labelled patient.*patient_without_label 1",
    )
    settings = load_settings()
    (tmp_path / "labels.csv").write_text(labels)
    with pytest.raises(InputError, match="events file .*nowhere.csv: not found"):
        ingest_module.ingest(
            settings, [tmp_path / "nowhere.csv"], tmp_path / "labels.csv", tmp_path / "splits.csv", tmp_path / "out", 1
        )


def test_stable_partition_is_a_fixed_hash():
    ids = pa.array(["200001", "P-17", "", "ü"])
    assert ingest_module.stable_partition(ids, 1 << 30).tolist() == [
        int.from_bytes(_fnv1a(s.encode()), "big") % (1 << 30) for s in ids.to_pylist()
    ]


def _fnv1a(data: bytes) -> bytes:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % (1 << 64)
    return h.to_bytes(8, "big")


def test_documented_worked_example(tmp_path):
    """The example in docs/input_formats.md gives the outcome it states."""
    readme = (Path(__file__).parents[1] / "docs" / "input_formats.md").read_text()
    block = readme.split("events.csv                              labels.csv\n", 1)[1].split("```", 1)[0]
    lines = block.rstrip("\n").split("\n")
    events = "".join(line[:40].rstrip() + "\n" for line in lines)
    labels = "".join(line[40:].strip() + "\n" for line in lines if line[40:].strip())
    columns = {"patient_id": "stay_id"}
    readme_data = {"columns": columns, "max_invalid_fraction": 0.2, "max_dropped_fraction": 0.5}
    qc, got, patients = run(tmp_path, events, labels, data=readme_data)
    assert got.drop(columns=["part", "split"]).values.tolist() == [
        ["200001", 0.0, "HR", 88.0],
        ["200001", 0.0, "MAP", 71.0],
        ["200001", 60.0, "Lactate", pytest.approx(2.6)],
        ["P-17", 30.0, "HR", 115.0],
        ["P-17", 30.0, "Temp", 38.2],
    ]
    assert {k: v for k, v in qc["rows_dropped"].items() if v} == {
        "value_not_numeric": 1,
        "negative_time": 1,
        "patient_without_label": 1,
        "duplicate_row": 1,
        "conflicting_duplicate_merged": 1,
    }
    assert qc["patients_dropped"]["label_without_events"] == 1 and qc["labels_dropped"]["duplicate_label_row"] == 1
    run(
        tmp_path / "strict",
        events,
        labels,
        data={"columns": columns, "max_dropped_fraction": 0.5},
        expect_error=r"value_not_numeric: 1 rows, column 'value' \(e.g. file .*events0.csv rows 4\)",
    )
    schema_limit = {"columns": columns, "max_invalid_fraction": 0.2, "max_dropped_fraction": 0.2}
    run(
        tmp_path / "default",
        events,
        labels,
        data=schema_limit,
        expect_error=r"3 of 10 rows \(30.0%\) would be dropped, more than data.max_dropped_fraction = 0.2",
    )


@pytest.mark.parametrize("key_limit", [2**62, 0])  # 0: the general lexsort path
def test_deduplicate_matches_pandas(monkeypatch, key_limit):
    monkeypatch.setattr(ingest_module, "KEY_LIMIT", key_limit)
    rng = np.random.default_rng(0)
    n = 5000
    frame = pd.DataFrame(
        {
            "patient": rng.integers(0, 30, n).astype(np.int32),
            "time": rng.integers(0, 20, n) * rng.choice([1.0, 0.5], n),  # non-integral times too
            "variable": rng.integers(0, 5, n).astype(np.int32),
            "value": rng.integers(0, 4, n).astype(np.float64),  # many exact duplicates
        }
    )
    order, values, n_exact, n_merged = ingest_module.deduplicate(*(frame[c].to_numpy() for c in frame.columns))
    distinct = frame.drop_duplicates()
    expected = distinct.groupby(["patient", "time", "variable"], sort=True)["value"].mean().reset_index()
    got = frame.iloc[order][["patient", "time", "variable"]].reset_index(drop=True)
    assert got.equals(expected[["patient", "time", "variable"]])
    assert np.allclose(values, expected["value"].to_numpy())
    assert n_exact == n - len(distinct) and n_merged == len(distinct) - len(expected)


def test_overflowing_values_and_times_are_counted_drops(tmp_path):
    """No non-finite number gets through: a value beyond 1e30 (whose square or merged
    mean would overflow) is `value_out_of_range`; a time in hours that is infinite in
    minutes is `time_not_finite`, checked after the conversion."""
    events = HEADER.replace("minute", "hour") + "".join(
        [
            "1,0,HR,80\n",
            "1,1,HR,1e300\n",  # one huge value
            "1,2,HR,1.7e308\n",
            "1,2,HR,1.6e308\n",  # conflicting duplicates whose mean would be inf
            "2,1e307,HR,80\n",  # finite hours, infinite minutes
            "2,1,HR,-2e30\n",
            "2,1,MAP,1e30\n",  # the bound itself is kept
        ]
    )
    labels = "patient_id,in_hospital_mortality\n1,0\n2,1\n"
    data = {"time_unit": "hours", "columns": {"time": "hour"}, "max_invalid_fraction": 0.9}
    qc, got, _ = run(tmp_path, events, labels, data=data)
    assert {k: v for k, v in qc["rows_dropped"].items() if v} == {"value_out_of_range": 4, "time_not_finite": 1}
    assert got[["patient_id", "time", "variable", "value"]].values.tolist() == [
        ["1", 0.0, "HR", 80.0],
        ["2", 60.0, "MAP", 1e30],
    ]
    assert qc["rows_in"] == qc["rows_kept"] + sum(qc["rows_dropped"].values())
    message = run(
        tmp_path / "strict",
        events,
        labels,
        data={**data, "max_invalid_fraction": 0.05},
        expect_error=r"value_out_of_range: 4 rows, column 'value'",
    )
    assert "time_not_finite: 1 rows, column 'hour'" in message


def test_total_dropped_share_is_limited_and_near_miss_ids_are_named(tmp_path):
    """Negative times and unlabelled patients are not input errors, but losing most of
    the rows to them stops `ingest`, naming every reason; ids like `007` against `7`
    are named, in the error and, below the limit, as a warning in qc.json."""
    events = HEADER + "".join(f"1,{-t},HR,80\n" for t in range(1, 7)) + "1,0,HR,80\n1,1,HR,81\n1,2,HR,82\n"
    labels = "patient_id,in_hospital_mortality\n1,0\n7,1\n"
    message = run(tmp_path, events, labels, data={"max_dropped_fraction": 0.2}, expect_error=r"6 of 9 rows")
    assert "more than data.max_dropped_fraction = 0.2" in message
    assert "negative_time: 6 rows, column 'minute' (e.g. file" in message

    events = HEADER + "".join(f"{pid},{t},HR,80\n" for pid in ("1", "007", "0P-3") for t in range(3))
    labels = "patient_id,in_hospital_mortality\n1,0\n7,1\np-3,0\n"
    message = run(tmp_path / "ids", events, labels, data={"max_dropped_fraction": 0.5}, expect_error="6 of 9 rows")
    assert "patient_without_label: 6 rows, column 'patient_id'" in message
    assert "'007' in the events and '7' in the labels" in message
    assert "'0P-3' in the events and 'p-3' in the labels" not in message  # a leading zero before a letter is kept

    qc, _, _ = run(tmp_path / "warn", events, labels, data={"max_dropped_fraction": 0.7})
    assert qc["rows_dropped"]["patient_without_label"] == 6
    assert qc["warnings"] == [
        "ids that differ only in leading zeros or case, e.g. '007' in the events and '7' in the labels: ids are "
        "compared as strings (after stripping whitespace and a trailing .0), so write them the same way in both files"
    ]
