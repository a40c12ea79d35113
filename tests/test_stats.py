"""stats: train-only statistics and vocabulary (no leakage), std rules, streaming merge."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_shards import random_events, write_events

from seqsetvae.data import stats
from seqsetvae.errors import InputError


def run(tmp_path, events, labels, n_partitions=3):
    write_events(tmp_path / "events", events, labels, n_partitions)
    argv = [
        "--events",
        str(tmp_path / "events"),
        "--stats",
        str(tmp_path / "norm.json"),
        "--vocab",
        str(tmp_path / "vocab.json"),
    ]
    assert stats.main(argv) == 0
    return json.loads((tmp_path / "norm.json").read_text()), json.loads((tmp_path / "vocab.json").read_text())


def test_train_only_matches_pandas_and_vocab_sorted(tmp_path):
    events, labels = random_events(60, seed=0)
    norm, vocab = run(tmp_path, events, labels)
    train = events[events["split"] == "train"]
    expected = train.groupby("variable")["value"].agg(["mean", "std", "size"])
    assert vocab["variables"] == sorted(train["variable"].unique())
    assert list(norm["variables"]) == vocab["variables"]
    for name, row in expected.iterrows():
        got = norm["variables"][name]
        assert got["count"] == row["size"]
        assert got["mean"] == pytest.approx(row["mean"], rel=1e-12)
        assert got["std"] == pytest.approx(row["std"], rel=1e-10)


def test_valid_and_test_do_not_move_stats_or_vocabulary(tmp_path):
    events, labels = random_events(45, seed=1)
    base, base_vocab = run(tmp_path / "a", events, labels)
    held_out = events["split"] != "train"
    moved = events.copy()
    moved.loc[held_out, "value"] = moved.loc[held_out, "value"] * 1000 + 1e6
    moved.loc[held_out & (moved.index % 3 == 0), "variable"] = "only_in_held_out"
    got, got_vocab = run(tmp_path / "b", moved, labels)
    assert got == base and got_vocab == base_vocab
    assert "only_in_held_out" not in got_vocab["variables"]


def test_std_rules_single_observation_and_constant(tmp_path):
    rows = [
        ("P1", 1.0, "once", 7.0, "train"),
        ("P1", 1.0, "flat", 3.0, "train"),
        ("P2", 2.0, "flat", 3.0, "train"),
        ("P1", 2.0, "two", 1.0, "train"),
        ("P2", 3.0, "two", 4.0, "train"),
        ("P3", 1.0, "once", 100.0, "valid"),
    ]
    events = pd.DataFrame(rows, columns=["patient_id", "time", "variable", "value", "split"])
    norm, vocab = run(tmp_path, events, {"P1": 0, "P2": 1, "P3": 0}, n_partitions=2)
    v = norm["variables"]
    assert vocab["variables"] == ["flat", "once", "two"]
    assert v["once"] == {"mean": 7.0, "std": 1.0, "count": 1}
    assert v["flat"] == {"mean": 3.0, "std": 1.0, "count": 2}
    assert v["two"]["mean"] == 2.5 and v["two"]["std"] == pytest.approx(np.sqrt(4.5), rel=1e-15)  # ddof 1


def test_partition_merge_is_numerically_sound():
    # a large offset with a small spread, split unevenly: a naive sum-of-squares in
    # float64 loses every digit here; Chan's merge of per-part moments keeps them
    rng = np.random.default_rng(0)
    values = 1e9 + rng.normal(0, 1e-3, size=10_001)
    parts = np.split(values, [1, 17, 5000])
    moments = stats.Moments()
    for k, part in enumerate(parts):
        m = part.mean()
        names = ["x", f"only{k}"]  # variables appear and grow the running arrays
        counts = np.array([len(part), 1.0])
        moments.merge(names, counts, counts, np.array([m, k]), np.array([((part - m) ** 2).sum(), 0]))
    assert moments.names == ["x", "only0", "only1", "only2", "only3"]
    assert moments.count.tolist() == [len(values), 1, 1, 1, 1] and moments.mean[1:].tolist() == [0, 1, 2, 3]
    std = np.sqrt(moments.m2[0] / (len(values) - 1))
    m2_before = moments.m2[0]
    assert std == pytest.approx(np.std(values - 1e9, ddof=1), rel=1e-6)
    assert moments.mean[0] == pytest.approx(values.mean(), rel=1e-15)
    # a part whose events have no value moves the event count only
    moments.merge(["x", "codes"], np.array([5.0, 3.0]), np.zeros(2), np.zeros(2), np.zeros(2))
    assert moments.events[:1].tolist() == [len(values) + 5] and moments.count[0] == len(values)
    assert moments.mean[0] == pytest.approx(values.mean(), rel=1e-15) and moments.m2[0] == m2_before
    assert (moments.events[-1], moments.count[-1], moments.mean[-1], moments.m2[-1]) == (3, 0, 0, 0)


def test_no_train_events_and_missing_directory_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        stats.train_statistics(tmp_path / "nope")
    columns = ["patient_id", "time", "variable", "value", "split"]
    events = pd.DataFrame([("P1", 1.0, "a", 1.0, "valid")], columns=columns)
    write_events(tmp_path / "events", events, {"P1": 0}, 1)
    with pytest.raises(InputError, match="the train split has no events"):
        stats.train_statistics(tmp_path / "events")
