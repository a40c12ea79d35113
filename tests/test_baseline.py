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
        rows.append(np.concatenate([mean, last, np.log1p(count), (count > 0).astype(float),
                                    [np.log1p(len(sets)), np.log1p(len(events)), np.log1p(hours)]]))  # fmt: skip
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
        patient_ids=["A"], labels=np.array([1]), variable_ids=np.array([1, 0, 1, 1, 0], dtype=np.int32),
        values=np.array([2.0, 7.0, 5.0, -1.0, 3.0], dtype=np.float32), set_times=np.array([0.0, 30.0, 90.0], dtype=np.float32),
        set_offsets=np.array([0, 1, 3, 5]), patient_offsets=np.array([0, 3]),
    )  # fmt: skip
    f = baseline.patient_features(patients, 2)[0]
    names = baseline.feature_names(["a", "b"])
    got = dict(zip(names, f))
    assert got["mean:b"] == pytest.approx(2.0) and got["last:b"] == -1.0 and got["last:a"] == 3.0
    assert got["log_count:a"] == pytest.approx(np.log1p(2)) and got["observed:a"] == 1.0
    assert got["log_hours"] == pytest.approx(np.log1p(1.5)) and got["log_sets"] == pytest.approx(np.log1p(3))


def test_baseline_stage_scores_with_the_evaluation_code(small_shards, tmp_path):
    out = tmp_path / "baselines"
    settings = {"evaluate": {"bootstrap_resamples": 150, "seed": 0}, "baseline": {"lr_c_grid": [0.1, 1.0]}}
    argv = ["--settings", json.dumps(settings), "--shards", str(small_shards / "shards"),
            "--vocab", str(small_shards / "vocab.json"), "--out-dir", str(out)]  # fmt: skip
    assert baseline.main(argv) == 0
    for name in ("logistic_regression", "gradient_boosting"):
        metrics = json.loads((out / f"{name}.json").read_text())
        predictions = pd.read_parquet(out / f"{name}_predictions.parquet")
        assert predictions.columns.tolist() == ["patient_id", "label", "probability"]
        y, p = predictions.label.to_numpy(), predictions.probability.to_numpy()
        expected = classification_metrics(y, p, 150, 0)
        for key in ("auroc", "auroc_ci", "auprc", "auprc_ci", "brier", "n_patients", "n_positive"):
            assert metrics[key] == expected[key], key
        assert metrics["name"] == name and metrics["split"] == "test" and np.isfinite(p).all()
    chosen = json.loads((out / "logistic_regression.json").read_text())["chosen_on_valid"]
    assert chosen["C"] in (0.1, 1.0)

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
