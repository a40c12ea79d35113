"""seqsetvae baseline: per-patient features against a direct computation, metrics through
the evaluation's own code, and the outputs the report reads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seqsetvae.batching import random_patients
from seqsetvae.errors import InputError
from seqsetvae.evaluation import baseline
from seqsetvae.evaluation.metrics import classification_metrics


def direct_features(patients, vocab_size: int) -> np.ndarray:
    """The same features, one patient and one variable at a time (the slow reference)."""
    rows = []
    for p in range(patients.n_patients):
        sets = range(patients.patient_offsets[p], patients.patient_offsets[p + 1])
        events = range(patients.set_offsets[sets.start], patients.set_offsets[sets.stop])
        variables = patients.variable_ids[list(events)]
        values = patients.values[list(events)].astype(np.float64)
        mean, last, count = [], [], []
        for v in range(vocab_size):
            mine = values[variables == v]
            mean.append(mine.mean() if len(mine) else np.nan)
            last.append(mine[-1] if len(mine) else np.nan)
            count.append(len(mine))
        count = np.array(count, dtype=np.float64)
        hours = (float(patients.set_times[sets.stop - 1]) - float(patients.set_times[sets.start])) / 60.0
        rows.append(
            np.concatenate(
                [
                    mean,
                    last,
                    np.log1p(count),
                    (count > 0).astype(float),
                    [np.log1p(len(sets)), np.log1p(len(events)), np.log1p(hours)],
                ]
            )
        )
    return np.array(rows)


def test_features_equal_a_direct_per_patient_computation():
    patients = random_patients(25, mean_sets=6, mean_events=20, vocab_size=9, max_set_size=5, seed=3)
    got = baseline.patient_features(patients, 9)
    expected = direct_features(patients, 9)
    assert got.shape == (25, 4 * 9 + 3) == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert np.isnan(got).any()  # some variables are never measured by some patients
    assert len(baseline.feature_names([f"v{i}" for i in range(9)])) == got.shape[1]


def test_last_value_is_the_latest_in_time_even_with_repeats_in_a_set():
    from seqsetvae.data.ragged import RaggedPatients

    # one patient, sets at minutes 0, 30, 90; variable 1 measured at 0 (2.0), 30 (5.0) and 90 (-1.0)
    patients = RaggedPatients(
        patient_ids=["A"],
        labels=np.array([1]),
        variable_ids=np.array([1, 0, 1, 1, 0], dtype=np.int32),
        values=np.array([2.0, 7.0, 5.0, -1.0, 3.0], dtype=np.float32),
        set_times=np.array([0.0, 30.0, 90.0], dtype=np.float32),
        set_offsets=np.array([0, 1, 3, 5]),
        patient_offsets=np.array([0, 3]),
    )
    f = baseline.patient_features(patients, 2)[0]
    names = baseline.feature_names(["a", "b"])
    got = dict(zip(names, f))
    assert got["mean:b"] == pytest.approx(2.0) and got["last:b"] == -1.0 and got["last:a"] == 3.0
    assert got["log_count:a"] == pytest.approx(np.log1p(2)) and got["observed:a"] == 1.0
    assert got["log_hours"] == pytest.approx(np.log1p(1.5)) and got["log_sets"] == pytest.approx(np.log1p(3))


def test_baseline_stage_scores_with_the_evaluation_code(small_shards, tmp_path):
    out = tmp_path / "baselines"
    settings = {"evaluate": {"bootstrap_resamples": 150, "seed": 0}, "baseline": {"lr_c_grid": [0.1, 1.0]}}
    argv = [
        "--settings",
        json.dumps(settings),
        "--shards",
        str(small_shards / "shards"),
        "--vocab",
        str(small_shards / "vocab.json"),
        "--out-dir",
        str(out),
    ]
    assert baseline.main(argv) == 0
    keys = None
    for name in baseline.MODELS:  # the schema's default list: all of them
        metrics = json.loads((out / f"{name}.json").read_text())
        assert keys is None or set(metrics) == keys, name
        keys = set(metrics)
        predictions = pd.read_parquet(out / f"{name}_predictions.parquet")
        assert predictions.columns.tolist() == ["patient_id", "label", "probability"]
        y, p = predictions.label.to_numpy(), predictions.probability.to_numpy()
        expected = classification_metrics(y, p, 150, 0)
        for key in ("auroc", "auroc_ci", "auprc", "auprc_ci", "brier", "n_patients", "n_positive"):
            assert metrics[key] == expected[key], key
        assert metrics["name"] == name and metrics["split"] == "test" and np.isfinite(p).all()
    chosen = json.loads((out / "logistic_regression.json").read_text())["chosen_on_valid"]
    assert chosen["C"] in (0.1, 1.0) and chosen["at_grid_edge"] is True  # two values: both are ends
    data = {s: baseline.split_features(small_shards / "shards", s) for s in ("train", "valid")}
    aurocs = {}
    for c in (0.03, 0.1, 1.0):
        _, alone = baseline.fit_baseline("logistic_regression", data, {"lr_c_grid": [c], "lr_max_iter": 2000}, 0)
        assert "at_grid_edge" not in alone  # one value: no grid to be at the end of
        aurocs[c] = alone["val_auroc"]
    _, three = baseline.fit_baseline(
        "logistic_regression", data, {"lr_c_grid": [0.03, 0.1, 1.0], "lr_max_iter": 2000}, 0
    )
    best = max(aurocs, key=lambda c: (aurocs[c], -list(aurocs).index(c)))
    assert three["C"] == best and three["at_grid_edge"] == (best != 0.1)

    # the same features and model by hand give the same test predictions
    x = {s: baseline.split_features(small_shards / "shards", s) for s in ("train", "test")}
    model = baseline.make_model("logistic_regression", {"lr_max_iter": 2000}, 0, chosen["C"]).fit(*x["train"][:2])
    by_hand = model.predict_proba(x["test"][0])[:, 1]
    lr = pd.read_parquet(out / "logistic_regression_predictions.parquet")
    assert lr.patient_id.tolist() == list(x["test"][2])
    np.testing.assert_allclose(lr.probability, by_hand, rtol=1e-12)


def test_one_class_train_split_is_an_input_error(small_shards, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(small_shards / "shards", shards)
    index_path = shards / "train" / "index.json"
    index = json.loads(index_path.read_text())
    index["patients"]["label"] = [0] * len(index["patients"]["label"])
    index_path.write_text(json.dumps(index))
    argv = ["--shards", str(shards), "--vocab", str(small_shards / "vocab.json"), "--out-dir", str(tmp_path / "b")]
    with pytest.raises(InputError, match=r"train: every train patient has label 0"):
        baseline.main(argv)
    assert not (tmp_path / "b").exists()


# -- the gru baseline -----------------------------------------------------------------


def direct_bins(patients, vocab_size: int, bin_hours: float, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """`binned_sequences`, one patient, bin and variable at a time (the slow reference)."""
    per_patient = []
    for p in range(patients.n_patients):
        first_set, stop_set = patients.patient_offsets[p], patients.patient_offsets[p + 1]
        t0 = float(patients.set_times[first_set])
        events = []  # (bin, variable, value) in time order
        for s in range(first_set, stop_set):
            b = int(np.floor((float(patients.set_times[s]) - t0) / (60.0 * bin_hours)))
            for e in range(patients.set_offsets[s], patients.set_offsets[s + 1]):
                events.append((b, int(patients.variable_ids[e]), float(patients.values[e])))
        n_bins = events[-1][0] + 1
        skipped = max(n_bins - max_bins, 0)
        rows = []
        for kept in range(min(n_bins, max_bins)):
            b = kept + skipped
            value, observed = np.zeros(vocab_size), np.zeros(vocab_size)
            for event_bin, v, x in events:
                if event_bin <= b:
                    value[v] = x  # the latest so far wins
                if event_bin == b:
                    observed[v] = 1.0
            rows.append(np.concatenate([value, observed]))
        per_patient.append(np.array(rows))
    lengths = np.array([len(r) for r in per_patient])
    inputs = np.zeros((len(per_patient), lengths.max(), 2 * vocab_size))
    for p, rows in enumerate(per_patient):
        inputs[p, : len(rows)] = rows
    return inputs, lengths


def hand_cohort():
    from seqsetvae.data.ragged import RaggedPatients

    # A: minutes 0 (v0 1.0, v1 2.0), 20 (v0 3.0, v0 3.5: a repeat in one set), 130 (v2 -1.0;
    #    bin 1 is a gap), 185 (v1 0.5) -> 4 bins.
    # B: minutes 10 (v1 5.0), 400 (v0 2.0), 420 (v0 4.0) -> 7 one-hour bins (v1 only before the last 4).
    # C: minute 5 (v2 1.5) -> 1 bin.
    sets = [
        (0, [(0, 1.0), (1, 2.0)]),
        (20, [(0, 3.0), (0, 3.5)]),
        (130, [(2, -1.0)]),
        (185, [(1, 0.5)]),
        (10, [(1, 5.0)]),
        (400, [(0, 2.0)]),
        (420, [(0, 4.0)]),
        (5, [(2, 1.5)]),
    ]
    events = [e for _, set_events in sets for e in set_events]
    return RaggedPatients(
        patient_ids=["A", "B", "C"],
        labels=np.array([1, 0, 1]),
        variable_ids=np.array([v for v, _ in events], dtype=np.int32),
        values=np.array([x for _, x in events], dtype=np.float32),
        set_times=np.array([t for t, _ in sets], dtype=np.float64),
        set_offsets=np.concatenate([[0], np.cumsum([len(e) for _, e in sets])]),
        patient_offsets=np.array([0, 4, 7, 8]),
    )


def test_binned_sequences_equal_a_direct_per_patient_computation():
    from seqsetvae.evaluation.sequence_baseline import binned_sequences

    patients = hand_cohort()
    inputs, lengths = binned_sequences(patients, 3, bin_hours=1.0, max_bins=4)
    assert inputs.dtype == np.float32 and lengths.dtype == np.int64 and inputs.shape == (3, 4, 6)
    assert lengths.tolist() == [4, 4, 1]
    # spelled out for A: bin 0 keeps the last v0 (3.5); bin 1 (gap) carries everything forward
    np.testing.assert_array_equal(inputs[0, :, :3], [[3.5, 2, 0], [3.5, 2, 0], [3.5, 2, -1], [3.5, 0.5, -1]])
    np.testing.assert_array_equal(inputs[0, :, 3:], [[1, 1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0]])
    # B keeps bins 3..6: v1 (measured in bin 0) carried in unobserved, v0's last value 4.0 in bin 6
    np.testing.assert_array_equal(inputs[1, :, :3], [[0, 5, 0], [0, 5, 0], [0, 5, 0], [4, 5, 0]])
    np.testing.assert_array_equal(inputs[1, :, 3:], [[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
    assert not inputs[2, 1:].any()  # padding past C's single bin
    for bin_hours, max_bins in ((1.0, 4), (0.5, 3), (2.0, 48), (1 / 6, 20)):
        got, got_lengths = binned_sequences(patients, 3, bin_hours, max_bins)
        expected, expected_lengths = direct_bins(patients, 3, bin_hours, max_bins)
        np.testing.assert_array_equal(got_lengths, expected_lengths)
        np.testing.assert_array_equal(got, expected.astype(np.float32))

    # random patients: many sets, gaps, stays longer than max_bins
    patients = random_patients(30, mean_sets=20, mean_events=60, vocab_size=7, max_set_size=4, seed=5)
    got, got_lengths = binned_sequences(patients, 7, 1.0, 8)
    expected, expected_lengths = direct_bins(patients, 7, 1.0, 8)
    assert (expected_lengths == 8).any() and (expected_lengths < 8).any()
    np.testing.assert_array_equal(got_lengths, expected_lengths)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


GRU_SETTINGS = {"bin_hours": 1.0, "max_bins": 48, "hidden": 16, "lr": 0.003, "epochs": 6, "patience": 3}


def test_gru_baseline_writes_predictions_scored_by_the_evaluation_code(small_shards, tmp_path):
    import time

    from seqsetvae.data.reader import ShardReader

    out = tmp_path / "baselines"
    settings = {
        "evaluate": {"bootstrap_resamples": 150, "seed": 1},
        "baseline": {"models": ["gru"], "gru": GRU_SETTINGS},
    }
    argv = [
        "--settings",
        json.dumps(settings),
        "--shards",
        str(small_shards / "shards"),
        "--vocab",
        str(small_shards / "vocab.json"),
        "--out-dir",
        str(out),
        "--threads",
        "1",
    ]
    start = time.perf_counter()
    assert baseline.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["gru.json", "gru_predictions.parquet"]
    metrics = json.loads((out / "gru.json").read_text())
    print(f"gru baseline stage: {time.perf_counter() - start:.2f} s, fit_seconds {metrics['fit_seconds']:.2f}")
    predictions = pd.read_parquet(out / "gru_predictions.parquet")
    test = ShardReader(small_shards / "shards", "test")
    assert predictions.patient_id.tolist() == test.patient_ids.tolist()
    assert predictions.label.tolist() == test.labels.tolist()
    y, p = predictions.label.to_numpy(), predictions.probability.to_numpy()
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    expected = classification_metrics(y, p, 150, 1)
    for key in ("auroc", "auroc_ci", "auprc", "auprc_ci", "brier", "n_patients", "n_positive"):
        assert metrics[key] == expected[key], key
    assert metrics["name"] == "gru" and metrics["split"] == "test" and metrics["n_patients"] == len(test)
    assert 1 <= metrics["chosen_on_valid"]["epoch"] <= GRU_SETTINGS["epochs"]
    assert metrics["features"]["n"] == 2 * 10 and metrics["features"]["max_bins"] == 48


def test_gru_is_deterministic_for_a_seed(small_shards):
    from seqsetvae.evaluation.sequence_baseline import gru_baseline

    read = {split: baseline.read_split(small_shards / "shards", split) for split in baseline.SPLITS}
    first, chosen, _ = gru_baseline(read, GRU_SETTINGS, seed=4, threads=1)
    again, chosen_again, _ = gru_baseline(read, GRU_SETTINGS, seed=4, threads=1)
    np.testing.assert_array_equal(first, again)
    assert chosen == chosen_again
    other, _, _ = gru_baseline(read, GRU_SETTINGS, seed=5, threads=1)
    assert not np.array_equal(first, other)


def test_gru_learns_a_label_read_at_each_patients_last_bin():
    """The label is the sign of variable 0 at the patient's own last bin: only a model that
    stops at each true length (packing) can read it; the padded bins hold zeros."""
    import torch

    from seqsetvae.evaluation.sequence_baseline import fit_gru

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)

    def split(n):
        lengths = rng.integers(2, 13, n)
        x = rng.standard_normal((n, 12, 8)).astype(np.float32)
        x[np.arange(12)[None, :] >= lengths[:, None]] = 0.0
        y = (x[np.arange(n), lengths - 1, 0] > 0.3).astype(np.int64)
        return x, lengths.astype(np.int64), y

    data = {"train": split(600), "valid": split(150), "test": split(300)}
    settings = {"hidden": 16, "lr": 0.01, "epochs": 15, "patience": 4}
    probabilities, chosen = fit_gru(data, settings, seed=0)
    from sklearn.metrics import roc_auc_score

    assert chosen["val_auroc"] > 0.9
    assert roc_auc_score(data["test"][2], probabilities) > 0.9
