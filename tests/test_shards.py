"""shards: sets, truncation at set boundaries, set-size cap, unseen variables, sorting,
shard layout, and an exact round trip through the reader against a plain reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqsetvae.data import qc as qc_stage
from seqsetvae.data import shards, stats
from seqsetvae.data.reader import ShardReader
from seqsetvae.errors import InputError

# ----------------------------------------------------------------------------------
# a writer of the validated-events format of docs/design.md (what `ingest` writes)


def write_events(
    events_dir: Path,
    events: pd.DataFrame,
    labels: dict[str, int],
    n_partitions: int = 3,
    seed: int = 0,
    shuffle: bool = True,
):
    """Write `events` (patient_id, time, variable, value, split) as validated partitions,
    rows shuffled inside each partition (or sorted, as ingest writes them), plus
    patients.parquet and ingest's qc.json."""
    events_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = sorted(events["patient_id"].unique())
    partition_of = {pid: i % n_partitions for i, pid in enumerate(ids)}
    events = events.assign(partition=events["patient_id"].map(partition_of))
    for p in range(n_partitions):
        part = events[events["partition"] == p]
        if shuffle:
            part = part.iloc[rng.permutation(len(part))]
        else:
            part = part.sort_values(["patient_id", "time", "variable", "value"])
        table = pa.table(
            {
                "patient_id": pa.array(part["patient_id"].tolist(), pa.string()),
                "time": pa.array(part["time"].to_numpy(np.float64)),
                "variable": pa.array(part["variable"].tolist(), pa.string()),
                "value": pa.array(part["value"].to_numpy(np.float64)),
                "split": pa.array(part["split"].tolist(), pa.string()),
            }
        )
        with pa.ipc.new_file(str(events_dir / f"part-{p:05d}.arrow"), table.schema) as writer:
            writer.write_table(table, max_chunksize=max(1, len(part) // 2))  # several record batches
    per_patient = events.groupby("patient_id").agg(split=("split", "first"), n_events=("time", "size"))
    patients = pa.table(
        {
            "patient_id": pa.array(list(per_patient.index), pa.string()),
            "label": pa.array([labels[pid] for pid in per_patient.index], pa.int8()),
            "split": pa.array(per_patient["split"].tolist()),
            "n_events": pa.array(per_patient["n_events"].to_numpy(np.int64)),
            "partition": pa.array([partition_of[pid] for pid in per_patient.index], pa.int32()),
        }
    )
    pq.write_table(patients, events_dir / "patients.parquet")
    n = len(events)
    qc = {
        "rows_in": n + 5,
        "rows_kept": n,
        "rows_dropped": {"value_not_numeric": 5},
        "patients_in": len(ids) + 1,
        "patients_kept": len(ids),
        "patients_dropped": {"patient_without_label": 1},
        "labels_in": len(ids),
        "labels_kept": len(ids),
        "labels_dropped": {},
    }
    (events_dir / "qc.json").write_text(json.dumps(qc))


def random_events(n_patients: int = 40, seed: int = 0, splits=("train", "valid", "test")) -> tuple[pd.DataFrame, dict]:
    """Patients with sets of 1..8 events at integer-ish times, some repeated variables
    in a set (same variable, different values), ids that do not sort like numbers."""
    rng = np.random.default_rng(seed)
    variables = [f"var{k:02d}" for k in range(12)]
    rows = []
    labels = {}
    for p in range(n_patients):
        pid = f"P-{p * 7 % 101}"
        split = splits[p % len(splits)] if p >= 3 else "train"
        labels[pid] = int(rng.integers(0, 2))
        n_sets = int(rng.integers(1, 25))
        times = np.sort(rng.choice(5000, size=n_sets, replace=False)) + rng.choice([0.0, 0.5])
        for t in times:
            size = int(rng.integers(1, 9))
            names = rng.choice(variables, size=size)
            for name in names:
                rows.append((pid, float(t), str(name), float(np.round(rng.normal(50, 10), 1)), split))
    frame = pd.DataFrame(rows, columns=["patient_id", "time", "variable", "value", "split"])
    return frame, labels


def run_stage(
    tmp: Path,
    events: pd.DataFrame,
    labels: dict,
    settings: dict | None = None,
    n_partitions: int = 3,
    write: bool = True,
    shuffle: bool = True,
):
    """events -> stats -> shards in `tmp`; returns (shards dir, shards qc)."""
    if write:
        write_events(tmp / "events", events, labels, n_partitions, shuffle=shuffle)
    text = json.dumps(settings or {})
    assert (
        stats.main(
            [
                "--events",
                str(tmp / "events"),
                "--stats",
                str(tmp / "norm.json"),
                "--vocab",
                str(tmp / "vocab.json"),
                "--settings",
                text,
            ]
        )
        == 0
    )
    assert (
        shards.main(
            [
                "--events",
                str(tmp / "events"),
                "--stats",
                str(tmp / "norm.json"),
                "--vocab",
                str(tmp / "vocab.json"),
                "--out",
                str(tmp / "shards"),
                "--qc",
                str(tmp / "shards_qc.json"),
                "--settings",
                text,
            ]
        )
        == 0
    )
    return tmp / "shards", json.loads((tmp / "shards_qc.json").read_text())


# ----------------------------------------------------------------------------------
# reference: the documented policies, written plainly (a loop per patient is fine here)


def reference(events: pd.DataFrame, labels: dict, options: dict, normalization: dict) -> dict:
    """Patients as {id: label, split, sets [(time, variable ids, z-values)]}; z-values
    with the stage's statistics (stats are checked against pandas in test_stats)."""
    vocabulary = sorted(events.loc[events["split"] == "train", "variable"].unique())
    vocab_id = {name: i for i, name in enumerate(vocabulary)}
    mean = pd.Series({k: v["mean"] for k, v in normalization["variables"].items()})
    std = pd.Series({k: v["std"] for k, v in normalization["variables"].items()})
    L, cap, mode = options["max_sequence_length"], options.get("max_set_size"), options.get("truncate", "first")
    out = {}
    for pid, rows in events[events["variable"].isin(vocab_id)].groupby("patient_id"):
        rows = rows.assign(vid=rows["variable"].map(vocab_id)).sort_values(["time", "vid", "value"])
        sets = [group for _, group in rows.groupby("time", sort=True)]
        sets = [s.iloc[:cap] if cap else s for s in sets]
        if mode == "last":
            sets = sets[::-1]
        kept, total = [], 0
        cut = len(sets[0]) > L
        for s in sets:
            if total + len(s) > L:
                if not kept:  # the first set alone is over budget: cut to L events
                    kept.append(s.iloc[:L])
                break
            kept.append(s)
            total += len(s)
        if mode == "last":
            kept = kept[::-1]
        out[pid] = {
            "label": labels[pid],
            "split": rows["split"].iloc[0],
            "cut": cut,
            "sets": [
                (
                    float(s["time"].iloc[0]),
                    s["vid"].tolist(),
                    ((s["value"] - s["variable"].map(mean)) / s["variable"].map(std)).astype(np.float32).tolist(),
                )
                for s in kept
            ],
        }
    return out


def read_back(shards_dir: Path, split: str) -> dict:
    reader = ShardReader(shards_dir, split)
    batch = reader.take(np.arange(len(reader)))
    batch.validate()
    out = {}
    for p, pid in enumerate(batch.patient_ids):
        sets = []
        for s in range(batch.patient_offsets[p], batch.patient_offsets[p + 1]):
            lo, hi = batch.set_offsets[s], batch.set_offsets[s + 1]
            sets.append((float(batch.set_times[s]), batch.variable_ids[lo:hi].tolist(), batch.values[lo:hi].tolist()))
        out[pid] = {"label": int(batch.labels[p]), "split": split, "sets": sets}
    return out


@pytest.mark.parametrize(
    "options",
    [
        {"max_sequence_length": 1000},
        {"max_sequence_length": 20, "truncate": "first"},
        {"max_sequence_length": 20, "truncate": "last"},
        {"max_sequence_length": 5, "truncate": "last", "max_set_size": 3},
        {"max_sequence_length": 3, "truncate": "first"},  # many first sets over budget
        {"max_sequence_length": 2, "truncate": "last"},  # many last sets over budget
    ],
)
def test_round_trip_equals_reference(tmp_path, options):
    events, labels = random_events(60, seed=1)
    options = {**options, "shard_size": 7}
    shards_dir, qc = run_stage(tmp_path, events, labels, {"shards": options})
    expected = reference(events, labels, options, json.loads((tmp_path / "norm.json").read_text()))
    got = {}
    for split in ("train", "valid", "test"):
        got.update(read_back(shards_dir, split))
    assert got.keys() == expected.keys()
    for pid in expected:
        assert got[pid]["label"] == expected[pid]["label"]
        assert got[pid]["split"] == expected[pid]["split"]
        assert len(got[pid]["sets"]) == len(expected[pid]["sets"]), pid
        for (t1, v1, x1), (t2, v2, x2) in zip(got[pid]["sets"], expected[pid]["sets"]):
            assert t1 == np.float32(t2) and v1 == v2
            np.testing.assert_array_equal(np.float32(x1), np.float32(x2))
    kept = sum(len(v) for p in expected.values() for _, v, _ in p["sets"])
    assert qc["rows_kept"] == kept
    assert qc["truncation"]["sets_cut_to_budget"] == sum(p["cut"] for p in expected.values())
    assert qc["rows_in"] == len(events) == kept + sum(qc["rows_dropped"].values())
    assert all(sum(len(v) for _, v, _ in p["sets"]) <= options["max_sequence_length"] for p in got.values())
    # rows already in order (as ingest writes them) take the no-sort path: same shards
    presorted, _ = run_stage(tmp_path / "presorted", events, labels, {"shards": options}, shuffle=False)
    for split in ("train", "valid", "test"):
        assert read_back(presorted, split) == read_back(shards_dir, split)


def test_truncation_first_and_last_at_set_boundaries():
    # one patient, sets of sizes 3, 2, 4, 1 at times 10, 20, 30, 40; budget 6
    sizes = [3, 2, 4, 1]
    time = np.repeat([10.0, 20.0, 30.0, 40.0], sizes)
    variable = np.concatenate([np.arange(n) for n in sizes])
    value = np.arange(len(time), dtype=np.float64)
    patient = np.zeros(len(time), dtype=np.int32)
    first = shards.build_sets(patient, time, variable, value, 6, "first")
    assert first["set_sizes"].tolist() == [3, 2] and first["set_times"].tolist() == [10.0, 20.0]
    assert first["counts"]["patients_truncated"] == 1
    assert first["counts"]["sets_removed"] == 2 and first["counts"]["events_removed"] == 5
    last = shards.build_sets(patient, time, variable, value, 6, "last")
    assert last["set_sizes"].tolist() == [4, 1] and last["set_times"].tolist() == [30.0, 40.0]
    assert last["values"].tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert last["counts"]["sets_removed"] == 2 and last["counts"]["events_removed"] == 5
    # a budget of exactly the total keeps everything
    whole = shards.build_sets(patient, time, variable, value, 10, "first")
    assert whole["set_sizes"].tolist() == sizes and whole["counts"]["patients_truncated"] == 0


def test_first_set_over_budget_is_cut_to_budget():
    # sets of sizes 5, 1: budget 2 keeps 2 events of the first set (first) / the last set (last)
    time = np.array([1.0] * 5 + [2.0])
    variable = np.array([4, 3, 2, 1, 0, 0])
    value = np.array([0.5, 0.4, 0.3, 0.2, 0.1, 9.0])
    patient = np.zeros(6, dtype=np.int32)
    first = shards.build_sets(patient, time, variable, value, 2, "first")
    assert first["set_sizes"].tolist() == [2] and first["variable_ids"].tolist() == [0, 1]
    assert first["counts"]["sets_cut_to_budget"] == 1 and first["counts"]["events_removed"] == 4
    last = shards.build_sets(patient, time, variable, value, 2, "last")
    assert last["set_sizes"].tolist() == [1] and last["values"].tolist() == [9.0]
    assert last["counts"]["sets_cut_to_budget"] == 0


def test_max_set_size_keeps_lowest_vocabulary_ids_and_counts():
    time = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    variable = np.array([3, 0, 2, 2, 1, 0])
    value = np.array([1.0, 2.0, 3.5, 3.0, 4.0, 5.0])
    patient = np.array([0, 0, 0, 0, 1, 1])
    out = shards.build_sets(patient, time, variable, value, 100, "first", max_set_size=2)
    assert out["variable_ids"].tolist() == [0, 2, 0, 1]
    assert out["values"].tolist() == [2.0, 3.0, 5.0, 4.0]  # same variable: by value
    assert out["counts"]["sets_capped"] == 1 and out["counts"]["events_capped_from_sets"] == 2
    assert out["counts"]["events_removed"] == 0


def test_sorted_within_split_and_shard_sizes(tmp_path):
    events, labels = random_events(50, seed=2)
    shards_dir, qc = run_stage(tmp_path, events, labels, {"shards": {"shard_size": 4, "max_sequence_length": 30}})
    top = json.loads((shards_dir / "index.json").read_text())
    assert top["vocab_size"] == len(json.loads((tmp_path / "vocab.json").read_text())["variables"])
    for split in ("train", "valid", "test"):
        index = json.loads((shards_dir / split / "index.json").read_text())
        patients = pd.DataFrame(index["patients"])
        assert list(zip(patients["n_events"], patients["patient_id"])) == sorted(
            zip(patients["n_events"], patients["patient_id"])
        )
        sizes = [s["n_patients"] for s in index["shards"]]
        assert all(n == 4 for n in sizes[:-1]) and 1 <= sizes[-1] <= 4
        assert sum(sizes) == index["n_patients"] == qc["by_split"][split]["patients"]
        assert index["n_events"] == qc["by_split"][split]["events"] == patients["n_events"].sum()
        assert sorted(p.name for p in (shards_dir / split).glob("*.safetensors")) == [
            f"shard-{k:05d}.safetensors" for k in range(len(sizes))
        ]
        assert top["splits"][split]["n_patients"] == index["n_patients"]


def test_unseen_variables_dropped_and_counted(tmp_path):
    events, labels = random_events(30, seed=3)
    extra = pd.DataFrame(
        {
            "patient_id": ["P-new", "P-new", events.loc[events["split"] == "valid", "patient_id"].iloc[0]],
            "time": [1.0, 2.0, 99999.0],
            "variable": ["onlyValid", "onlyValid", "onlyValid2"],
            "value": [1.0, 2.0, 3.0],
            "split": ["test", "test", "valid"],
        }
    )
    labels["P-new"] = 1
    shards_dir, qc = run_stage(tmp_path, pd.concat([events, extra]), labels)
    assert qc["rows_dropped"]["unseen_variable"] == 3
    assert qc["unseen_variables"] == {"onlyValid": 2, "onlyValid2": 1}
    assert qc["patients_dropped"] == {"only_unseen_variables": 1}
    assert "P-new" not in ShardReader(shards_dir, "test").patient_ids
    times = ShardReader(shards_dir, "valid").take(np.arange(len(ShardReader(shards_dir, "valid")))).set_times
    assert 99999.0 not in times


def test_unseen_variables_error_lists_them_and_writes_nothing(tmp_path):
    events, labels = random_events(30, seed=3)
    extra = pd.DataFrame(
        {"patient_id": ["P-1"], "time": [1.0], "variable": ["zzz_unknown"], "value": [1.0], "split": ["test"]}
    )
    labels["P-1"] = 0
    with pytest.raises(InputError, match=r"1 variable\(s\) absent from the train split.*zzz_unknown \(1 events\)"):
        run_stage(tmp_path, pd.concat([events, extra]), labels, {"data": {"unseen_variables": "error"}})
    assert not (tmp_path / "shards").exists() and not (tmp_path / "shards_qc.json").exists()
    assert not list(tmp_path.glob(".shards*"))  # no scratch left behind


def test_split_differing_from_patients_file_is_an_input_error(tmp_path):
    events, labels = random_events(10, seed=4)
    assert (events.loc[events["patient_id"] == "P-28", "split"] == "valid").all()
    events.loc[events["patient_id"] == "P-28", "split"] = "test"  # its events say test ...
    write_events(tmp_path / "events", events, labels, 1)
    patients = pd.read_parquet(tmp_path / "events/patients.parquet")
    patients.loc[patients["patient_id"] == "P-28", "split"] = "valid"  # ... patients.parquet valid
    patients.to_parquet(tmp_path / "events/patients.parquet")
    with pytest.raises(InputError, match=r"column split: patient\(s\) whose split differs .*: P-28$"):
        run_stage(tmp_path, events, labels, n_partitions=1, write=False)


def test_qc_balance_merges_and_checks(tmp_path):
    events, labels = random_events(30, seed=5)
    shards_dir, _ = run_stage(tmp_path, events, labels, {"shards": {"max_sequence_length": 10, "max_set_size": 2}})
    out = tmp_path / "qc.json"
    args = ["--events", str(tmp_path / "events"), "--shards-qc", str(tmp_path / "shards_qc.json")]
    assert qc_stage.main(args + ["--shards", str(shards_dir), "--out", str(out)]) == 0
    qc = json.loads(out.read_text())
    assert qc["rows_in"] == len(events) + 5
    assert qc["rows_in"] == qc["rows_kept"] + sum(qc["rows_dropped"].values())
    assert qc["rows_dropped"]["truncated_set"] > 0 and qc["rows_dropped"]["truncated_sequence"] > 0
    assert qc["rows_dropped"]["value_not_numeric"] == 5
    assert qc["patients_in"] == qc["patients_kept"] + sum(qc["patients_dropped"].values())
    stored = sum(
        len(ShardReader(shards_dir, s).take(np.arange(len(ShardReader(shards_dir, s)))).values)
        for s in ("train", "valid", "test")
    )
    assert qc["rows_kept"] == stored
    # a shards_qc that disagrees with the shard files is a bug: qc fails loudly
    broken = json.loads((tmp_path / "shards_qc.json").read_text())
    broken["rows_kept"] -= 1
    broken["rows_dropped"]["truncated_sequence"] += 1
    (tmp_path / "shards_qc.json").write_text(json.dumps(broken))
    with pytest.raises(AssertionError, match="shard files hold"):
        qc_stage.main(args + ["--shards", str(shards_dir), "--out", str(tmp_path / "qc2.json")])
    assert not (tmp_path / "qc2.json").exists()


def test_empty_split_has_an_index_and_no_shards(tmp_path):
    events, labels = random_events(12, seed=6, splits=("train", "test"))
    shards_dir, qc = run_stage(tmp_path, events, labels)
    index = json.loads((shards_dir / "valid" / "index.json").read_text())
    assert index["n_patients"] == 0 and index["shards"] == [] and qc["by_split"]["valid"]["patients"] == 0
    reader = ShardReader(shards_dir, "valid")
    assert len(reader) == 0 and reader.take([]).n_events == 0


def test_set_times_are_exact_and_no_z_value_overflows(tmp_path):
    """Times above 2^24 minutes (float32's exact range) stay distinct and exact; a test
    value whose z-value float32 cannot hold is dropped and counted, never stored as inf."""
    events, labels = random_events(30, seed=5)
    test_patient = events.loc[events["split"] == "test", "patient_id"].iloc[0]
    extra = pd.DataFrame(
        {
            "patient_id": ["T-1", "T-1", "T-1", test_patient, test_patient],
            "time": [2.0**24, 2.0**24 + 1, 1e308, 3.0, 4.0],
            "variable": ["tight", "tight", "var00", "tight", "tight"],
            # train spread ~1e-12: a z-value of 1e30 / 1e-12 does not fit float32
            "value": [1.0, 1.0 + 2.0**-40, 50.0, 1e30, 1.0],
            "split": ["train", "train", "train", "test", "test"],
        }
    )
    labels["T-1"] = 0
    shards_dir, qc = run_stage(tmp_path, pd.concat([events, extra]), labels)
    assert qc["rows_dropped"]["normalized_value_out_of_range"] == 1
    assert qc["rows_in"] == qc["rows_kept"] + sum(qc["rows_dropped"].values())
    train = read_back(shards_dir, "train")
    assert [time for time, _, _ in train["T-1"]["sets"]] == [2.0**24, 2.0**24 + 1, 1e308]
    test = read_back(shards_dir, "test")[test_patient]["sets"]
    values = [v for _, _, set_values in test for v in set_values]
    assert np.isfinite(values).all() and 3.0 not in [time for time, _, _ in test] and 4.0 in [t for t, _, _ in test]
