"""`seqsetvae synthetic`: realistic shape, learnable label, deterministic files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from seqsetvae.cli import main as cli
from seqsetvae.data.synthetic import generate, variable_table
from seqsetvae.settings import load_settings


@pytest.fixture(scope="module")
def cohort():
    settings = load_settings({"synthetic": {"patients": 2000, "seed": 3}})
    events, labels, names = generate(settings["synthetic"])
    return pd.DataFrame(events), labels, names, settings["synthetic"]


def test_sizes_spread_and_label_rate(cohort):
    events, labels, names, synthetic = cohort
    per_patient = events.groupby("patient")
    sets = per_patient["minute"].nunique()
    n_events = per_patient.size()
    assert len(names) == synthetic["variables"] == 40
    assert abs(sets.mean() - synthetic["mean_sets"]) < 0.1 * synthetic["mean_sets"]
    assert abs(n_events.mean() - synthetic["mean_events"]) < 0.1 * synthetic["mean_events"]
    # realistic spread: some short stays, some long ones
    assert sets.quantile(0.05) < 0.4 * synthetic["mean_sets"] < 2.0 * synthetic["mean_sets"] < sets.quantile(0.95)
    assert 0.15 <= labels["label"].mean() <= 0.25
    stay_days = per_patient["minute"].max() / 1440
    assert 1.5 < stay_days.median() < 5


def test_sets_share_timestamps_vitals_often_labs_rarely(cohort):
    events, _, names, _ = cohort
    set_sizes = events.groupby(["patient", "minute"]).size()
    assert set_sizes.mean() > 2 and (set_sizes >= 3).mean() > 0.3
    # a variable appears at most once per set
    assert not events.duplicated(["patient", "minute", "variable"]).any()
    _, _, is_vital = variable_table(len(names))
    counts = np.bincount(events["variable"], minlength=len(names))
    assert counts[is_vital].mean() > 4 * counts[~is_vital].mean()
    assert {"HR", "MAP", "Lactate", "Creatinine", "GCS"} <= set(names)
    # irregular times, non-decreasing within each patient
    assert (events.groupby("patient")["minute"].diff().dropna() >= 0).all()
    gaps = events.drop_duplicates(["patient", "minute"]).groupby("patient")["minute"].diff().dropna()
    assert gaps.std() > 10


def test_label_is_learnable_from_variable_means(cohort):
    events, labels, names, _ = cohort
    means = events.pivot_table(index="patient", columns="variable", values="value", aggfunc="mean")
    means = ((means - means.mean()) / means.std()).fillna(0.0)
    y = labels["label"][means.index]
    p = cross_val_predict(LogisticRegression(max_iter=2000), means.values, y, cv=5, method="predict_proba")[:, 1]
    assert roc_auc_score(y, p) >= 0.8


def test_files_in_user_format_and_deterministic(tmp_path):
    settings = (
        '{"synthetic": {"patients": 50, "seed": 7}, "data": {"time_unit": "hours", '
        '"columns": {"patient_id": "stay", "time": "hour", "variable": "item", "value": "val", '
        '"label": "died"}}}'
    )
    paths = {}
    for run in ("a", "b"):
        events, labels = tmp_path / f"{run}_events.csv", tmp_path / f"{run}_labels.csv"
        assert cli(["synthetic", "--events", str(events), "--labels", str(labels), "--settings", settings]) == 0
        paths[run] = (events, labels)
    assert paths["a"][0].read_bytes() == paths["b"][0].read_bytes()
    assert paths["a"][1].read_bytes() == paths["b"][1].read_bytes()
    events = pd.read_csv(paths["a"][0], dtype={"stay": str})
    labels = pd.read_csv(paths["a"][1], dtype={"stay": str})
    assert list(events.columns) == ["stay", "hour", "item", "val"]
    assert list(labels.columns) == ["stay", "died"]
    assert labels["stay"].iloc[0] == "200001" and labels["stay"].is_unique
    assert set(labels["died"]) <= {0, 1}
    assert set(events["stay"]) == set(labels["stay"])
    # hours: fractional times, stays of days not months
    assert events["hour"].max() < 24 * 60 and (events["hour"] % 1 != 0).any()

    other = tmp_path / "other.csv"
    cli(
        [
            "synthetic",
            "--events",
            str(other),
            "--labels",
            str(tmp_path / "o.csv"),
            "--settings",
            settings.replace('"seed": 7', '"seed": 8'),
        ]
    )
    assert other.read_bytes() != paths["a"][0].read_bytes()
