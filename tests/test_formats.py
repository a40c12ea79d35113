"""Input formats: one cohort written in all five layouts gives the same shards; the
formats' own policies (windows, prediction times, sepsis onset) keep the label from
leaking; each format's bad inputs fail naming the file and the column or subject."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqsetvae import cli
from seqsetvae.data.reader import ShardReader
from seqsetvae.data.stats import load_vocabulary
from seqsetvae.errors import InputError

VARIABLES = ["HR", "Lactate", "Temp", "pH"]
SPLIT_OF = ["train"] * 8 + ["valid"] * 4 + ["test"] * 4
BASE = datetime.datetime(2150, 3, 1)


def make_cohort(seed: int = 0, hours: int = 12):
    """16 patients (ids 1001...), hourly sets from hour 0, values exact in float32."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(16):
        for hour in range(int(rng.integers(3, hours))):
            chosen = [v for v in VARIABLES if rng.random() < 0.6] or ["HR"]
            if hour == 0:
                chosen = sorted(set(chosen) | {"HR"})
            for variable in chosen:
                rows.append((1001 + p, hour * 60, variable, float(rng.integers(0, 400)) / 4))
    label = np.array([p % 2 for p in range(16)], dtype=np.int8)
    return rows, label


def write_csv_format(root: Path, rows, label):
    root.mkdir(parents=True, exist_ok=True)
    text = "patient_id,minute,variable,value\n" + "".join(f"{p},{m},{v},{x}\n" for p, m, v, x in rows)
    (root / "events.csv").write_text(text)
    (root / "labels.csv").write_text(
        "patient_id,in_hospital_mortality\n" + "".join(f"{1001 + i},{y}\n" for i, y in enumerate(label))
    )
    (root / "splits.csv").write_text(
        "patient_id,split\n" + "".join(f"{1001 + i},{s}\n" for i, s in enumerate(SPLIT_OF))
    )
    return {
        "format": "csv",
        "events": root / "events.csv",
        "labels": root / "labels.csv",
        "splits": root / "splits.csv",
    }


def meds_time(patient: int, minute: float) -> datetime.datetime:
    return BASE + datetime.timedelta(days=patient - 1001, minutes=minute)


def write_meds(root: Path, rows, label, prediction_minutes=None, splits=True):
    """A MEDS root: the measurements, plus per subject one static row (no time: kept at
    the subject's time origin) and one code without a value at minute 0 (kept, z = 0);
    prediction time = last event unless `prediction_minutes` {subject: minute} says
    otherwise."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(exist_ok=True)
    subjects = sorted({r[0] for r in rows})
    extra = [(s, None, "GENDER//F", 1.0) for s in subjects] + [(s, 0.0, "ADMISSION", None) for s in subjects]
    data = sorted(rows + extra, key=lambda r: (r[0], -1 if r[1] is None else r[1]))
    table = pa.table(
        {
            "subject_id": pa.array([r[0] for r in data], pa.int64()),
            "time": pa.array([None if r[1] is None else meds_time(r[0], r[1]) for r in data], pa.timestamp("us")),
            "code": pa.array([r[2] for r in data], pa.string()),
            "numeric_value": pa.array([r[3] for r in data], pa.float32()),
        }
    )
    half = len(table) // 2
    cut = int(np.searchsorted(table["subject_id"].to_numpy(), table["subject_id"][half].as_py()))
    pq.write_table(table.slice(0, cut), root / "data" / "0.parquet")
    pq.write_table(table.slice(cut), root / "data" / "1.parquet")
    if splits:
        names = {"train": "train", "valid": "tuning", "test": "held_out"}
        pq.write_table(
            pa.table(
                {"subject_id": pa.array(subjects, pa.int64()), "split": [names[SPLIT_OF[s - 1001]] for s in subjects]}
            ),
            root / "metadata" / "subject_splits.parquet",
        )
    last = {}
    for p, m, _, _ in rows:
        last[p] = max(last.get(p, 0), m)
    prediction = prediction_minutes or last
    (root / "task").mkdir(exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array(subjects, pa.int64()),
                "prediction_time": pa.array([meds_time(s, prediction[s]) for s in subjects], pa.timestamp("us")),
                "boolean_value": pa.array([bool(label[s - 1001]) for s in subjects]),
            }
        ),
        root / "task" / "labels.parquet",
    )
    return {"format": "meds", "events": root, "labels": root / "task"}


def write_physionet2012(root: Path, rows, label, csv_splits):
    (root / "set-a").mkdir(parents=True, exist_ok=True)
    by_patient = {}
    for p, m, v, x in rows:
        by_patient.setdefault(p, []).append(f"{m // 60:02d}:{m % 60:02d},{v},{x:g}\n")
    for p, lines in by_patient.items():
        # the RecordID row and a -1 missing marker: dropped and counted
        text = "Time,Parameter,Value\n00:00,RecordID," + str(p) + "\n00:00,Height,-1\n" + "".join(lines)
        (root / "set-a" / f"{p}.txt").write_text(text)
    (root / "Outcomes-a.txt").write_text(
        "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
        + "".join(f"{1001 + i},10,3,5,-1,{y}\n" for i, y in enumerate(label))
    )
    return {
        "format": "physionet2012",
        "events": root / "set-a",
        "labels": root / "Outcomes-a.txt",
        "splits": csv_splits,
    }


def write_physionet2019(root: Path, rows, label, csv_splits):
    """Hourly .psv files; a positive stay gets one more hour with SepsisLabel 1 (its
    cells must not become events)."""
    root.mkdir(parents=True, exist_ok=True)
    cells = {}
    for p, m, v, x in rows:
        cells.setdefault(p, {}).setdefault(m // 60, {})[v] = x
    onset_cells = 0
    for p, hours in cells.items():
        lines = ["|".join(VARIABLES + ["ICULOS", "SepsisLabel"])]
        for hour in range(max(hours) + 1):
            lines.append("|".join([f"{hours.get(hour, {}).get(v, 'NaN')}" for v in VARIABLES] + [str(hour), "0"]))
        if label[p - 1001]:
            lines.append("|".join(["1.5", "NaN", "37.25", "NaN", str(max(hours) + 1), "1"]))
            onset_cells += 2
        (root / f"{p}.psv").write_text("\n".join(lines) + "\n")
    return {"format": "physionet2019", "events": root, "splits": csv_splits, "onset_cells": onset_cells}


def write_seqsetvae_v0(root: Path, rows, label):
    for p in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == p]
        folder = root / "patient_ehr" / SPLIT_OF[p - 1001]
        folder.mkdir(parents=True, exist_ok=True)
        minutes = [float(r[1]) for r in mine]
        pq.write_table(
            pa.table(
                {
                    "variable": [r[2] for r in mine],
                    "value": [r[3] for r in mine],
                    "minute": minutes,
                    "set_index": np.unique(minutes, return_inverse=True)[1],
                }
            ),
            folder / f"{p}.0.parquet",
        )
    (root / "oc.csv").write_text(
        "ts_id,in_hospital_mortality\n" + "".join(f"{1001 + i}.0,{y}\n" for i, y in enumerate(label))
    )
    return {"format": "seqsetvae_v0", "events": root / "patient_ehr", "labels": root / "oc.csv"}


def run_data_stages(out: Path, spec: dict, **data) -> dict:
    """labels (non-CSV formats), splits, ingest, stats and shards, by their commands."""
    from seqsetvae.data.formats import carries_splits
    from seqsetvae.settings import load_settings

    data = {"format": spec["format"], "events": str(spec["events"]), "incomplete_splits": "warn", **data}
    settings = json.dumps({"data": data})
    labels, splits = spec.get("labels"), spec.get("splits")
    if spec["format"] != "csv":
        given = out / "given_splits.csv" if carries_splits(load_settings({"data": data})["data"]) else None
        argv = ["labels", "--events", str(spec["events"]), "--out", str(out / "labels.csv")]
        argv += ["--labels", str(labels)] if labels else []
        argv += ["--splits-out", str(given)] if given else []
        _run(argv, settings)
        labels, splits = out / "labels.csv", given or splits
    _run(
        ["splits", "--labels", str(labels), "--out", str(out / "splits.csv")]
        + (["--splits", str(splits)] if splits else []),
        settings,
    )
    _run(
        [
            "ingest",
            "--events",
            str(spec["events"]),
            "--labels",
            str(labels),
            "--splits",
            str(out / "splits.csv"),
            "--out",
            str(out / "events"),
            "--threads",
            "1",
        ],
        settings,
    )
    _run(
        [
            "stats",
            "--events",
            str(out / "events"),
            "--stats",
            str(out / "stats.json"),
            "--vocab",
            str(out / "vocab.json"),
        ],
        settings,
    )
    _run(
        [
            "shards",
            "--events",
            str(out / "events"),
            "--stats",
            str(out / "stats.json"),
            "--vocab",
            str(out / "vocab.json"),
            "--out",
            str(out / "shards"),
            "--qc",
            str(out / "shards_qc.json"),
        ],
        settings,
    )
    return json.loads((out / "events" / "qc.json").read_text())


def _run(argv, settings):
    code = cli.main([argv[0], "--settings", settings, *argv[1:]])
    assert code == 0, argv


def measurements(out: Path) -> dict:
    """patient id -> (split, label, [(set time, [(variable, value)...])...])."""
    vocab = out / "vocab.json" if (out / "vocab.json").exists() else out / "stats" / "vocabulary.json"
    vocabulary = load_vocabulary(vocab)
    result = {}
    for split in ("train", "valid", "test"):
        reader = ShardReader(out / "shards", split)
        for i in range(len(reader)):
            patient = reader[i]
            sets = []
            offsets = patient.set_offsets
            for s, time in enumerate(patient.set_times.tolist()):
                events = range(int(offsets[s]), int(offsets[s + 1]))
                sets.append(
                    (time, [(vocabulary[int(patient.variable_ids[e])], float(patient.values[e])) for e in events])
                )
            result[reader.patient_ids[i]] = (split, int(reader.labels[i]), sets)
    return result


def test_one_cohort_in_five_formats_gives_the_same_shards(tmp_path):
    rows, label = make_cohort()
    csv = write_csv_format(tmp_path / "csv", rows, label)
    specs = [
        csv,
        write_meds(tmp_path / "meds", rows, label),
        write_physionet2012(tmp_path / "p2012", rows, label, csv["splits"]),
        write_physionet2019(tmp_path / "p2019", rows, label, csv["splits"]),
        write_seqsetvae_v0(tmp_path / "v0", rows, label),
    ]
    results = {}
    for spec in specs:
        qc = run_data_stages(tmp_path / f"out-{spec['format']}", spec)
        results[spec["format"]] = (measurements(tmp_path / f"out-{spec['format']}"), qc)
    reference, csv_qc = results["csv"]
    assert len(reference) == 16 and csv_qc["rows_kept"] == len(rows)
    assert {p: s for p, (s, _, _) in reference.items()} == {str(1001 + i): s for i, s in enumerate(SPLIT_OF)}
    # MEDS: the same, plus each subject's static row and its code without a value, both
    # in its first set (minute 0) with z = 0 (GENDER//F's train values are all 1: std 1)
    extra = [("ADMISSION", 0.0), ("GENDER//F", 0.0)]
    meds_expected = {
        patient: (
            split,
            label,
            [(time, sorted(events + extra) if i == 0 else events) for i, (time, events) in enumerate(sets)],
        )
        for patient, (split, label, sets) in reference.items()
    }
    assert all(sets[0][0] == 0.0 for _, _, sets in reference.values())
    for name, (found, qc) in results.items():
        assert found == (meds_expected if name == "meds" else reference), name  # ids, splits, labels, sets, values
        assert qc["rows_kept"] == len(rows) + (32 if name == "meds" else 0), name
        assert qc["rows_without_value"] == (16 if name == "meds" else 0), name
        assert qc["format"] == name
    assert results["meds"][1]["format_counts"] == {"static_rows": 16, "text_value_not_read": 0}
    dropped = {name: {k: v for k, v in qc["rows_dropped"].items() if v} for name, (_, qc) in results.items()}
    assert dropped["csv"] == {} and dropped["seqsetvae_v0"] == {} and dropped["meds"] == {}
    assert dropped["physionet2012"] == {"record_id_row": 16, "missing_marker": 16}
    assert dropped["physionet2019"] == {"after_label_onset": specs[3]["onset_cells"]}
    for name, (_, qc) in results.items():  # every input row accounted for
        assert qc["rows_in"] == qc["rows_kept"] + sum(qc["rows_dropped"].values()), name


def test_observation_window_keeps_only_the_first_hours(tmp_path):
    rows, label = make_cohort(seed=1, hours=40)
    spec = write_csv_format(tmp_path / "csv", rows, label)
    qc = run_data_stages(tmp_path / "out", spec, observation_window_hours=24)
    found = measurements(tmp_path / "out")
    times = [t for _, _, sets in found.values() for t, _ in sets]
    late = sum(m >= 24 * 60 for _, m, _, _ in rows)
    assert late > 0 and max(times) < 24 * 60
    assert qc["rows_dropped"]["outside_observation_window"] == late
    assert qc["rows_kept"] == len(rows) - late


def test_meds_prediction_time_ends_the_observation(tmp_path):
    rows, label = make_cohort(seed=2, hours=30)
    last = {}
    for p, m, _, _ in rows:
        last[p] = max(last.get(p, 0), m)
    prediction = {p: (m // 60 // 2) * 60 + 30 for p, m in last.items()}  # half way, between two hours
    spec = write_meds(tmp_path / "meds", rows, label, prediction_minutes=prediction)
    qc = run_data_stages(tmp_path / "out", spec)
    found = measurements(tmp_path / "out")
    for patient, (_, _, sets) in found.items():
        # the origin is the subject's first kept event, here its hour-0 set
        assert max(t for t, _ in sets) <= prediction[int(patient)], patient
    after = sum(m > prediction[p] for p, m, _, _ in rows)
    assert after > 0 and qc["rows_dropped"]["after_prediction_time"] == after

    # with a 3 h window: only (prediction time - 3 h, prediction time], origin its first event
    qc = run_data_stages(tmp_path / "window", spec, observation_window_hours=3)
    found = measurements(tmp_path / "window")
    expected = {}
    for p, m, v, x in rows:
        if prediction[p] - 180 < m <= prediction[p]:
            expected.setdefault(p, []).append(m)
    for patient, (_, _, sets) in found.items():
        minutes = sorted(expected[int(patient)])
        assert [t for t, _ in sets] == sorted({m - minutes[0] for m in minutes})
        assert ("GENDER//F", 0.0) in sets[0][1]  # the static row joins the first set of the window
    inside = sum(len(v) for v in expected.values())
    # kept: the window's measurements, the static rows and each ADMISSION (minute 0) inside it
    admissions = sum(prediction[p] - 180 < 0 for p in prediction)
    assert qc["rows_kept"] == inside + 16 + admissions
    assert qc["rows_dropped"]["outside_observation_window"] == len(rows) - after - inside + 16 - admissions


def test_meds_codes_without_values_static_rows_and_text_values(tmp_path):
    """Events without a numeric_value (codes, text values) and static rows reach the
    shards with z = 0; a code's statistics come from its valued rows; duplicates of
    valueless rows are resolved like any other (docs/input_formats.md)."""
    root = tmp_path / "meds"
    (root / "data").mkdir(parents=True)
    (root / "metadata").mkdir()
    (root / "task").mkdir()
    rows = [  # subject, minute (None: static), code, numeric value, text value
        (1, None, "SEX//F", None, None),
        (1, 0, "DX//I10", None, None),
        (1, 0, "DX//I10", None, None),  # exact duplicate of a valueless row
        (1, 0, "HR", 80.0, None),
        (1, 60, "LAB", 5.0, None),
        (1, 60, "LAB", None, None),  # the same code at the same time with and without a value: merged to 5
        (1, 120, "NOTE", None, "stable"),  # a text value: the code is kept, the text not read
        (2, 0, "HR", 100.0, None),
        (2, 0, "LAB", None, None),
        (2, 30, "LAB", 7.0, None),
        (3, None, "SEX//F", None, None),  # a subject with static rows only
        (4, 0, "HR", 90.0, None),
        (4, 10, "NOTE", None, "worse"),
    ]
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array([r[0] for r in rows], pa.int64()),
                "time": pa.array(
                    [None if r[1] is None else meds_time(1000 + r[0], r[1]) for r in rows], pa.timestamp("us")
                ),
                "code": [r[2] for r in rows],
                "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
                "text_value": pa.array([r[4] for r in rows], pa.string()),
            }
        ),
        root / "data" / "0.parquet",
    )
    subjects = [1, 2, 3, 4]
    pq.write_table(
        pa.table({"subject_id": pa.array(subjects, pa.int64()), "split": ["train", "train", "tuning", "held_out"]}),
        root / "metadata" / "subject_splits.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array(subjects, pa.int64()),
                "prediction_time": pa.array([meds_time(1000 + s, 600) for s in subjects], pa.timestamp("us")),
                "boolean_value": [True, False, True, False],
            }
        ),
        root / "task" / "labels.parquet",
    )
    qc = run_data_stages(tmp_path / "out", {"format": "meds", "events": root, "labels": root / "task"})
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())["variables"]
    hr_std, lab_std = float(np.std([80, 100], ddof=1)), float(np.std([5, 7], ddof=1))
    assert stats["HR"] == {"mean": 90.0, "std": hr_std, "count": 2}
    assert stats["LAB"] == {"mean": 6.0, "std": lab_std, "count": 3, "values": 2}  # valued rows only
    assert stats["DX//I10"] == {"mean": 0.0, "std": 1.0, "count": 1, "values": 0}
    assert stats["SEX//F"] == stats["NOTE"] == {"mean": 0.0, "std": 1.0, "count": 1, "values": 0}
    assert set(stats) == {"DX//I10", "HR", "LAB", "NOTE", "SEX//F"}

    z = lambda v, mean, std: float(np.float32((v - mean) / std))  # noqa: E731
    found = measurements(tmp_path / "out")
    assert found == {
        "1": (
            "train",
            1,
            [
                (0.0, [("DX//I10", 0.0), ("HR", z(80, 90, hr_std)), ("SEX//F", 0.0)]),
                (60.0, [("LAB", z(5, 6, lab_std))]),
                (120.0, [("NOTE", 0.0)]),
            ],
        ),
        "2": ("train", 0, [(0.0, [("HR", z(100, 90, hr_std)), ("LAB", 0.0)]), (30.0, [("LAB", z(7, 6, lab_std))])]),
        "3": ("valid", 1, [(0.0, [("SEX//F", 0.0)])]),  # static rows only: one set at minute 0
        "4": ("test", 0, [(0.0, [("HR", 0.0)]), (10.0, [("NOTE", 0.0)])]),
    }
    assert qc["rows_in"] == len(rows) and qc["rows_kept"] == len(rows) - 2
    assert {k: v for k, v in qc["rows_dropped"].items() if v} == {"duplicate_row": 1, "conflicting_duplicate_merged": 1}
    assert qc["rows_without_value"] == 8  # before deduplication
    assert qc["format_counts"] == {"static_rows": 2, "text_value_not_read": 2}


def write_meds_task(root: Path, seed: int = 0):
    """A MEDS root (no subject_splits: a random split) with valued codes, a code without a
    value, a static row per subject, and a task of 2 to 5 prediction times per subject.
    Returns (data rows, label rows) as Python tuples."""
    rng = np.random.default_rng(seed)
    (root / "data").mkdir(parents=True)
    (root / "task").mkdir()
    rows, labels = [], []
    for subject in range(1, 25):
        rows.append((subject, None, "SEX//" + "FM"[subject % 2], None))
        for minute in np.unique(rng.integers(0, 2000, size=30)):
            code = str(rng.choice(["A", "B", "DX"]))
            rows.append((subject, int(minute), code, None if code == "DX" else float(rng.normal())))
        for minute in np.unique(rng.integers(100, 2100, size=int(rng.integers(2, 6)))):
            labels.append((subject, int(minute) * 60 + 30, bool(rng.random() < 0.4)))  # seconds: between minutes
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array([r[0] for r in rows], pa.int64()),
                "time": pa.array([None if r[1] is None else meds_time(r[0], r[1]) for r in rows], pa.timestamp("us")),
                "code": [r[2] for r in rows],
                "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
            }
        ),
        root / "data" / "0.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array([s for s, _, _ in labels], pa.int64()),
                "prediction_time": pa.array(
                    [meds_time(s, 0) + datetime.timedelta(seconds=t) for s, t, _ in labels], pa.timestamp("us")
                ),
                "boolean_value": [b for _, _, b in labels],
            }
        ),
        root / "task" / "labels.parquet",
    )
    return rows, labels


@pytest.mark.parametrize("window_hours", [None, 6])
def test_meds_task_with_several_prediction_times_per_subject(tmp_path, window_hours):
    """A sample is (subject, prediction time): its shard holds exactly the subject's
    events at or before that time (and inside the window), static rows at its first
    set; a subject's samples share one split; qc balances the rows written per sample."""
    rows, labels = write_meds_task(tmp_path / "meds")
    spec = {"format": "meds", "events": tmp_path / "meds", "labels": tmp_path / "meds" / "task"}
    extra = {} if window_hours is None else {"observation_window_hours": window_hours}
    qc = run_data_stages(tmp_path / "out", spec, split_fractions={"train": 0.5, "valid": 0.25, "test": 0.25}, **extra)
    found = measurements(tmp_path / "out")

    expected, written = {}, 0
    for subject, seconds, label in labels:
        end = seconds / 60  # minutes after the subject's day start
        timed = [(m, c) for s, m, c, _ in rows if s == subject and m is not None and m <= end]
        if window_hours is not None:
            timed = [(m, c) for m, c in timed if m > end - window_hours * 60]
        static = [c for s, m, c, _ in rows if s == subject and m is None]
        origin = min(m for m, _ in timed) if timed else 0
        sets = {}
        for m, c in timed:
            sets.setdefault(m - origin, []).append(c)
        sets.setdefault(0, []).extend(static)
        time = (meds_time(subject, 0) + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
        expected[f"{subject}@{time}"] = (label, [(float(t), sorted(codes)) for t, codes in sorted(sets.items())])
        written += len(timed) + len(static)
    assert {
        sample: (label, [(t, sorted(v for v, _ in events)) for t, events in sets])
        for sample, (_, label, sets) in found.items()
    } == expected
    # every sample of a subject in one split
    split_of = {}
    for sample, (split, _, _) in found.items():
        split_of.setdefault(sample.split("@")[0], set()).add(split)
    assert all(len(splits) == 1 for splits in split_of.values())
    assert {s for splits in split_of.values() for s in splits} == {"train", "valid", "test"}
    # the balance: each input row once, plus its copies for further samples
    assert qc["rows_in"] == len(rows)
    assert qc["rows_kept"] == written and qc["rows_copied"] > 0
    assert qc["rows_in"] + qc["rows_copied"] == qc["rows_kept"] + sum(qc["rows_dropped"].values())
    assert qc["patients_kept"] == len(labels)


ADMISSIONS_TASK = """
predicates:
  admission: {code: ADMISSION}
  death: {code: DEATH}
trigger: admission
windows:
  input: {start: null, end: trigger + 2h, start_inclusive: true, end_inclusive: true, index_timestamp: end}
  target: {start: input.end, end: start + 24h, start_inclusive: false, end_inclusive: true, label: death}
"""


def write_admissions(root: Path, split_a_subject: bool = False):
    """A MEDS root of two files (whole subjects, unless `split_a_subject`): 2 to 4
    admissions per subject with hourly HR, some ending in death 10 h after admission.
    Returns the expected task rows (subject, prediction time, label)."""
    rng = np.random.default_rng(0)
    rows, expected = [], []
    for subject in range(1, 9):
        start = BASE + datetime.timedelta(days=10 * subject)
        for a in range(int(rng.integers(2, 5))):
            admitted = start + datetime.timedelta(days=3 * a)
            rows.append((subject, admitted, "ADMISSION", None))
            rows += [(subject, admitted + datetime.timedelta(hours=h, minutes=30), "HR", 80.0 + h) for h in range(6)]
            dies = rng.random() < 0.3
            expected.append((subject, admitted + datetime.timedelta(hours=2), bool(dies)))
            if dies:
                rows.append((subject, admitted + datetime.timedelta(hours=10), "DEATH", None))
                break
    table = pa.table(
        {
            "subject_id": pa.array([r[0] for r in rows], pa.int64()),
            "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "code": [r[2] for r in rows],
            "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
        }
    )
    (root / "data" / "held").mkdir(parents=True)
    subjects = table["subject_id"].to_numpy()
    cut = int(np.searchsorted(subjects, 5)) + (3 if split_a_subject else 0)
    pq.write_table(table.slice(0, cut), root / "data" / "0.parquet")
    pq.write_table(table.slice(cut), root / "data" / "held" / "1.parquet")
    return expected


def test_aces_task_writes_one_label_row_per_admission(tmp_path):
    pytest.importorskip("aces")
    expected = write_admissions(tmp_path / "meds")
    (tmp_path / "task.yaml").write_text(ADMISSIONS_TASK)
    argv = ["task", "--events", str(tmp_path / "meds"), "--task", str(tmp_path / "task.yaml")]
    assert cli.main([*argv, "--out", str(tmp_path / "task")]) == 0
    assert sorted(p.relative_to(tmp_path / "task").as_posix() for p in (tmp_path / "task").rglob("*.parquet")) == [
        "0.parquet",
        "held/1.parquet",
    ]
    table = pq.read_table(tmp_path / "task")
    found = sorted(
        zip(table["subject_id"].to_pylist(), table["prediction_time"].to_pylist(), table["boolean_value"].to_pylist())
    )
    assert found == sorted(expected)
    # the meds format reads them: a sample per admission, ids subject@time, subject kept
    spec = {"format": "meds", "events": tmp_path / "meds", "labels": tmp_path / "task"}
    qc = run_data_stages(tmp_path / "out", spec, split_fractions={"train": 0.5, "valid": 0.25, "test": 0.25})
    written = pd_read_csv(tmp_path / "out" / "labels.csv")
    assert len(written) == len(expected) and qc["patients_kept"] == len(expected)
    assert all(
        i == f"{s}@{t}" for i, s, t in zip(written.patient_id, written.subject_id, written.prediction_time.str[:19])
    )


def test_aces_task_errors_name_the_task_and_the_files(tmp_path, monkeypatch):
    from seqsetvae.data.formats import aces_task

    pytest.importorskip("aces")
    write_admissions(tmp_path / "meds", split_a_subject=True)
    (tmp_path / "task.yaml").write_text(ADMISSIONS_TASK)
    with pytest.raises(
        InputError, match=r"MEDS data files .*0.parquet and .*1.parquet, column 'subject_id': subject 5 is in both"
    ):
        aces_task.write_task_labels(tmp_path / "meds", tmp_path / "task.yaml", tmp_path / "out")
    whole = tmp_path / "whole"
    write_admissions(whole)
    (tmp_path / "bad.yaml").write_text(ADMISSIONS_TASK.replace("trigger: admission", "trigger: nothing"))
    with pytest.raises(InputError, match=r"data.task .*bad.yaml: ACES failed on .*0.parquet"):
        aces_task.write_task_labels(whole, tmp_path / "bad.yaml", tmp_path / "out")
    monkeypatch.setattr(aces_task.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match=r"needs ACES \(aces-cli not found\); install it with"):
        aces_task.write_task_labels(whole, tmp_path / "task.yaml", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no partial output


def pd_read_csv(path):
    import pandas as pd

    return pd.read_csv(path, dtype=str)


def test_physionet2019_onset_hours_never_reach_the_shards(tmp_path):
    rows, label = make_cohort(seed=3)
    spec = write_physionet2019(tmp_path / "p2019", rows, label, None)
    # a positive stay whose label turns 1 in the middle: hours from there on are unseen
    path = tmp_path / "p2019" / "1002.psv"
    lines = path.read_text().splitlines()
    hours = len(lines) - 1
    onset_row = 3
    for i in range(onset_row, len(lines)):
        lines[i] = lines[i][: lines[i].rfind("|")] + "|1"
    path.write_text("\n".join(lines) + "\n")
    run_data_stages(tmp_path / "out", spec)
    found = measurements(tmp_path / "out")
    assert hours > onset_row and found["1002"][1] == 1
    assert max(t for t, _ in found["1002"][2]) < (onset_row - 1) * 60  # ICULOS of data row 3 is hour 2


@pytest.mark.parametrize(
    "fmt, breakage, message",
    [
        ("meds", "no_data", r"MEDS root .*: no data/ directory"),
        ("meds", "missing_labels", r"MEDS labels .*task: not found"),
        ("meds", "schema", r"MEDS data file .*0.parquet: does not match the MEDS DataSchema .*columns: code"),
        (
            "meds",
            "two_labels",
            r"MEDS label file .*labels.parquet, columns 'subject_id', 'prediction_time': subject 1001 has 2 label rows at",
        ),
        ("meds", "split_twice", r"subject_splits.parquet, column 'subject_id': subject 1001 is in two splits"),
        ("meds", "label_without_events", r"labels file .*labels.csv: 1 labelled patient\(s\) have no event.*'999'"),
        ("physionet2012", "no_record_id", r"PhysioNet 2012 file .*1003.txt: no RecordID row \(column 'Parameter'\)"),
        ("physionet2012", "missing_outcomes", r"PhysioNet 2012 outcomes file .*Outcomes-a.txt: cannot be read"),
        ("physionet2019", "missing_dir", r"PhysioNet 2019 directory .*p2019: not found \(data.events\)"),
        ("physionet2019", "no_iculos", r"PhysioNet 2019 file .*1004.psv: missing column 'ICULOS'"),
        ("physionet2019", "no_label", r"PhysioNet 2019 file .*1004.psv: missing column 'SepsisLabel'"),
        ("physionet2019", "text_cell", r"PhysioNet 2019 file .*1004.psv: rows 1, column 'HR': not a number \('high'\)"),
        ("seqsetvae_v0", "two_splits", r"patient '1001' has two files, .*test/1001.parquet and .*train/1001.0.parquet"),
        ("seqsetvae_v0", "missing_oc", r"labels file .*oc.csv: not found"),
        ("seqsetvae_v0", "no_minute", r"seqsetvae_v0 file .*1001.0.parquet: missing column 'minute'"),
    ],
)
def test_bad_inputs_of_each_format_name_the_file_and_column(tmp_path, fmt, breakage, message):
    rows, label = make_cohort(seed=4)
    csv = write_csv_format(tmp_path / "csv", rows, label)
    extra = {}
    if fmt == "meds":
        spec = write_meds(tmp_path / "meds", rows, label)
        if breakage == "missing_labels":
            import shutil

            shutil.rmtree(tmp_path / "meds" / "task")
        elif breakage == "no_data":
            (tmp_path / "meds" / "data" / "0.parquet").rename(tmp_path / "meds" / "0.parquet")
            (tmp_path / "meds" / "data" / "1.parquet").rename(tmp_path / "meds" / "1.parquet")
            (tmp_path / "meds" / "data").rmdir()
        elif breakage == "schema":
            table = pq.read_table(tmp_path / "meds" / "data" / "0.parquet")
            table = table.rename_columns(["subject_id", "time", "concept", "numeric_value"])
            pq.write_table(table, tmp_path / "meds" / "data" / "0.parquet")
        elif breakage == "two_labels":
            table = pq.read_table(tmp_path / "meds" / "task" / "labels.parquet")
            pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), tmp_path / "meds" / "task" / "labels.parquet")
        elif breakage == "split_twice":
            path = tmp_path / "meds" / "metadata" / "subject_splits.parquet"
            table = pq.read_table(path)
            extra_row = pa.table({"subject_id": pa.array([1001], pa.int64()), "split": ["held_out"]})
            pq.write_table(pa.concat_tables([table, extra_row]), path)
        elif breakage == "label_without_events":
            table = pq.read_table(tmp_path / "meds" / "task" / "labels.parquet")
            row = pa.table(
                {
                    "subject_id": pa.array([999], pa.int64()),
                    "prediction_time": table["prediction_time"][:1],
                    "boolean_value": [True],
                }
            )
            pq.write_table(
                pa.concat_tables([table, row.cast(table.schema)]), tmp_path / "meds" / "task" / "labels.parquet"
            )
            pq.write_table(
                pa.concat_tables(
                    [
                        pq.read_table(tmp_path / "meds" / "metadata" / "subject_splits.parquet"),
                        pa.table({"subject_id": pa.array([999], pa.int64()), "split": ["train"]}),
                    ]
                ),
                tmp_path / "meds" / "metadata" / "subject_splits.parquet",
            )
            extra = {"labels_without_events": "error"}
    elif fmt == "physionet2012":
        spec = write_physionet2012(tmp_path / "p2012", rows, label, csv["splits"])
        if breakage == "no_record_id":
            path = tmp_path / "p2012" / "set-a" / "1003.txt"
            path.write_text("\n".join(line for line in path.read_text().splitlines() if "RecordID" not in line) + "\n")
        else:
            (tmp_path / "p2012" / "Outcomes-a.txt").unlink()
    elif fmt == "physionet2019":
        spec = write_physionet2019(tmp_path / "p2019", rows, label, csv["splits"])
        path = tmp_path / "p2019" / "1004.psv"
        lines = path.read_text().splitlines()
        if breakage == "missing_dir":
            import shutil

            shutil.rmtree(tmp_path / "p2019")
        elif breakage == "no_iculos":
            lines = [line.replace("ICULOS", "Hour") if i == 0 else line for i, line in enumerate(lines)]
        elif breakage == "no_label":
            lines = [line.replace("SepsisLabel", "Sepsis") if i == 0 else line for i, line in enumerate(lines)]
        else:
            lines[1] = "high" + lines[1][lines[1].index("|") :]
        if breakage != "missing_dir":
            path.write_text("\n".join(lines) + "\n")
    else:
        spec = write_seqsetvae_v0(tmp_path / "v0", rows, label)
        ehr = tmp_path / "v0" / "patient_ehr"
        if breakage == "missing_oc":
            (tmp_path / "v0" / "oc.csv").unlink()
        elif breakage == "two_splits":
            (ehr / "test").mkdir(exist_ok=True)
            (ehr / "test" / "1001.parquet").write_bytes((ehr / "train" / "1001.0.parquet").read_bytes())
        else:
            table = pq.read_table(ehr / "train" / "1001.0.parquet")
            pq.write_table(table.drop(["minute"]), ehr / "train" / "1001.0.parquet")
    out = tmp_path / "out"
    with pytest.raises(AssertionError):
        run_data_stages(out, spec, **extra)
    # the stage that failed printed the message; run it again to read it
    with pytest.raises(InputError, match=message):
        _direct(out, spec, extra)
    assert not (out / "events").exists()


def _direct(out: Path, spec: dict, extra: dict):
    """The failing stage's function, for its message."""
    from seqsetvae.data import formats
    from seqsetvae.data.ingest import ingest
    from seqsetvae.settings import load_settings

    settings = load_settings(
        {"data": {"format": spec["format"], "events": str(spec["events"]), "incomplete_splits": "warn", **extra}}
    )
    data = settings["data"]
    splits_out = out / "given.csv" if formats.carries_splits(data) else None
    formats.adapter(spec["format"]).write_labels(
        spec["format"],
        Path(spec["events"]),
        str(spec.get("labels")) if spec.get("labels") else None,
        out / "labels.csv",
        splits_out,
        data,
    )
    ingest(settings, [str(spec["events"])], str(out / "labels.csv"), str(out / "splits.csv"), out / "events", 1)


@pytest.mark.pipeline
def test_original_layout_through_snakemake_with_its_embedding_table(tmp_path):
    """The migration path: `patient_ehr/` + `oc.csv` + `cached.csv` as they are, through
    the `shards` target (format_labels writes the labels and the folders' splits)."""
    import subprocess
    import sys

    import yaml

    rows, label = make_cohort(seed=5)
    spec = write_seqsetvae_v0(tmp_path / "v0", rows, label)
    rng = np.random.default_rng(0)
    (tmp_path / "v0" / "cached.csv").write_text(
        "Key,"
        + ",".join(f"d{i}" for i in range(8))
        + "\n"
        + "".join(f"{v}," + ",".join(f"{x:.4f}" for x in rng.standard_normal(8)) + "\n" for v in VARIABLES + ["Unused"])
    )
    config = {
        "data": {
            "source": "files",
            "format": "seqsetvae_v0",
            "events": str(spec["events"]),
            "labels": str(spec["labels"]),
            "incomplete_splits": "warn",
        },
        "embedding": {"method": "table", "table": str(tmp_path / "v0" / "cached.csv"), "dim": 8},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    repo = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(repo / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--cores",
        "1",
        "shards",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    results = tmp_path / "results"
    import pandas as pd

    splits = pd.read_csv(results / "splits.csv", dtype=str)
    assert dict(zip(splits.patient_id, splits.split)) == {str(1001 + i): s for i, s in enumerate(SPLIT_OF)}
    reference = tmp_path / "reference"
    run_data_stages(reference, write_csv_format(tmp_path / "csv", rows, label))
    assert measurements(results) == measurements(reference)
    from safetensors.numpy import load_file

    table = load_file(results / "embedding" / "embedding.safetensors")
    assert next(iter(table.values())).shape == (len(VARIABLES), 8)


def write_early_prediction_stays(root: Path, seed: int = 0) -> None:
    """40 hourly .psv stays of 2-14 rows: ICULOS from 1-3, sepsis onset at a random row or
    never, an Age column (static: repeated on every row), a few missing cells."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for p in range(40):
        n, start = int(rng.integers(2, 15)), int(rng.integers(1, 4))
        onset = int(rng.integers(0, n)) if rng.random() < 0.5 else n
        lines = ["|".join(["HR", "Lactate", "Age", "ICULOS", "SepsisLabel"])]
        for r in range(n):
            hr = f"{rng.integers(60, 120)}" if rng.random() < 0.8 else "NaN"
            lactate = f"{rng.integers(5, 40) / 10}" if rng.random() < 0.3 else "NaN"
            lines.append("|".join([hr, lactate, "63", str(start + r), "1" if r >= onset else "0"]))
        (root / f"p{p:04d}.psv").write_text("\n".join(lines) + "\n")


def test_physionet2019_early_prediction_cohort_against_a_direct_computation(tmp_path):
    import pandas as pd

    hour = 6
    write_early_prediction_stays(tmp_path / "p2019")
    qc = run_data_stages(
        tmp_path / "out", {"format": "physionet2019", "events": tmp_path / "p2019"}, prediction_hour=hour
    )
    found = measurements(tmp_path / "out")

    expected, excluded, cells = {}, {"stay_shorter_than_prediction_hour": 0, "sepsis_by_prediction_hour": 0}, {}
    for path in sorted((tmp_path / "p2019").glob("*.psv")):  # the task, stay by stay
        frame = pd.read_csv(path, sep="|")
        if len(frame) < hour or (frame["SepsisLabel"][:hour] == 1).any():
            reason = "stay_shorter_than_prediction_hour" if len(frame) < hour else "sepsis_by_prediction_hour"
            excluded[reason] += 1
            cells[reason] = cells.get(reason, 0) + int(frame[["HR", "Lactate", "Age"]].notna().sum().sum())
            continue
        window = frame[:hour]
        events = sorted(
            (60.0 * row.ICULOS, variable)
            for i, row in enumerate(window.itertuples())
            for variable in ("HR", "Lactate", "Age")
            if not np.isnan(getattr(row, variable)) and (variable != "Age" or i == 0)
        )
        expected[path.stem] = (int((frame["SepsisLabel"][hour:] == 1).any()), events)
        cells["after_prediction_hour"] = cells.get("after_prediction_hour", 0) + int(
            frame[hour:][["HR", "Lactate", "Age"]].notna().sum().sum()
        )
        cells["repeated_static_descriptor"] = cells.get("repeated_static_descriptor", 0) + hour - 1

    assert min(excluded.values()) > 0 and 0 < sum(y for y, _ in expected.values()) < len(expected)
    assert set(found) == set(expected)
    for stay, (_, label, sets) in found.items():
        events = sorted((t, variable) for t, members in sets for variable, _ in members)
        assert (label, events) == expected[stay], stay  # nothing of a row after the W-th
    cohort = qc["cohort"]
    assert cohort == {
        "prediction_hour": hour,
        "stays": 40,
        "eligible": len(expected),
        "positive": sum(y for y, _ in expected.values()),
        "excluded": excluded,
    }
    assert {k: v for k, v in qc["rows_dropped"].items() if v} == {k: v for k, v in cells.items() if v}
    labels = (tmp_path / "out" / "labels.csv").read_text().splitlines()
    assert len(labels) - 1 == len(expected)  # excluded stays have no label row


def test_prediction_hour_is_a_physionet2019_key():
    from seqsetvae.settings import load_settings

    with pytest.raises(InputError, match=r"data.prediction_hour: a physionet2019 task; data.format is 'csv'"):
        load_settings({"data": {"format": "csv", "prediction_hour": 24}})
