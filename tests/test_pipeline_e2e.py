"""The whole pipeline with Snakemake on tiny synthetic data, then the report's numbers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_PIPELINE_CONFIG
from test_pipeline_data import planned_jobs
from test_report import shown, table

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZES, SEEDS = [1, 2], [0, 1]
GRID = [0.5, 1.0, 2.0]
# .test/config.yaml with two seeds, 2 epochs of three validation points and noise-scale
# measurements, and a learning-rate grid on the first seed for 1 epoch of its own
CONFIG = copy.deepcopy(TINY_PIPELINE_CONFIG)
CONFIG["train"] |= {
    "batch_sizes": BATCH_SIZES,
    "seeds": SEEDS,
    "epochs": 2,
    "validations_per_epoch": 3,
    "noise_scale": {"per_epoch": 2, "patients": 4},
    "lr_grid": GRID,
    "lr_grid_seeds": 1,
    "lr_grid_epochs": 1,
}


def snakemake(workdir: Path, *args: str, config: str = "config.yaml") -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / config),
        "--cores",
        "2",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.pipeline
def test_pipeline_end_to_end(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run = snakemake(tmp_path, "reports/batch_comparison.md")
    assert run.returncode == 0, run.stderr[-5000:]
    results = tmp_path / "results"
    text = (tmp_path / "reports" / "batch_comparison.md").read_text()
    study = json.loads((tmp_path / "reports" / "batch_comparison.json").read_text())

    # the grid: every rate at seed 0 for 1 epoch; the choice from those runs' validation
    chosen, chosen_lr = {}, {}
    for b in BATCH_SIZES:
        grid = {
            m: json.loads((results / "grid_runs" / f"bs{b}" / f"lr{m:g}" / "seed0" / "metrics.json").read_text())
            for m in GRID
        }
        assert all(g["epochs"] == 1 and g["lr_multiplier"] == m and g["validations"] == 3 for m, g in grid.items())
        assert not (results / "grid_runs" / f"bs{b}" / "lr1" / "seed1").exists()
        best = max(GRID, key=lambda m: (grid[m]["best"]["val_auroc"], -grid[m]["best"]["val_loss"], -abs(m - 1)))
        choice = json.loads((results / "lr_grid" / f"bs{b}.json").read_text())
        assert choice["chosen"]["multiplier"] == best
        assert [c["val_auroc_mean"] for c in choice["candidates"]] == [grid[m]["best"]["val_auroc"] for m in GRID]
        chosen[b], chosen_lr[b] = best, grid[best]["lr"]
        entry = next(e for e in study["lr_grid"]["batch_sizes"] if e["batch_size"] == b)
        assert entry["chosen"] == best and entry["peak_lr"] == grid[best]["lr"]
    assert "## Learning-rate grid" in text and "](figures/lr_grid.png)" in text

    # one compared run per (batch size, seed) at the chosen rate, all on the same test patients
    assert [e["batch_size"] for e in study["batch_sizes"]] == BATCH_SIZES
    quality = table(text, "## Test-set quality")
    test_ids = None
    for i, b in enumerate(BATCH_SIZES):
        entry = study["batch_sizes"][i]
        assert entry["seeds"] == SEEDS and entry["lr_multiplier"] == chosen[b]
        assert sorted(p.name for p in (results / "runs" / f"bs{b}").iterdir()) == [f"lr{chosen[b]:g}"]
        for s in SEEDS:
            name = f"bs{b}/lr{chosen[b]:g}/seed{s}"
            train = json.loads((results / "runs" / name / "metrics.json").read_text())
            evaluation = json.loads((results / "eval" / f"{name}.json").read_text())
            assert train["batch_size"] == evaluation["batch_size"] == b and train["seed"] == evaluation["seed"] == s
            assert train["validations"] == 6 and train["noise_scale"]["measurements"] == 4
            assert train["lr"] == chosen_lr[b] and train["lr_multiplier"] == chosen[b] and train["epochs"] == 2
            predictions = pd.read_parquet(results / "eval" / f"{name}_predictions.parquet")
            ids = sorted(predictions.patient_id)
            assert test_ids is None or ids == test_ids
            test_ids = ids
        assert shown(quality.iloc[i]["test AUROC (mean)"], entry["test_auroc"]["mean"])
        assert entry["validation_points"] == 6
    assert study["test_split"]["patients"] == len(test_ids)
    assert [b["name"] for b in study["baselines"]] == ["logistic_regression", "gradient_boosting", "gru"]
    baseline = pd.read_parquet(results / "baselines" / "logistic_regression_predictions.parquet")
    assert sorted(baseline.patient_id) == test_ids
    assert study["summary"] == [
        line[2:] for line in text.split("## Summary\n", 1)[1].split("\n## ", 1)[0].strip().splitlines()
    ]

    for name in ("validation_curves", "training_loss", "throughput_memory", "lr_grid"):
        assert f"](figures/{name}.png)" in text
        assert (tmp_path / "reports" / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

    # everything is up to date afterwards: a second run has nothing to do
    again = snakemake(tmp_path, "-n", "reports/batch_comparison.md")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # a new seed trains only its own runs (and re-reports); nothing else reruns
    CONFIG["train"]["seeds"] = SEEDS + [2]
    (tmp_path / "more.yaml").write_text(yaml.safe_dump(CONFIG))
    dry = snakemake(tmp_path, "-n", "all", config="more.yaml")
    CONFIG["train"]["seeds"] = SEEDS
    assert planned_jobs(dry.stdout + dry.stderr) == {"train": 2, "evaluate": 2, "memory": 2, "report": 1, "all": 1}

    # the browsable Snakemake report holds the report() outputs with their captions
    html = snakemake(tmp_path, "--report", str(tmp_path / "report.html"))
    assert html.returncode == 0, html.stderr[-3000:]
    page = (tmp_path / "report.html").read_text(errors="replace")
    assert "Batch-size study" in page and "validation_curves.png" in page


def run_meds_pipeline(tmp_path: Path, **data) -> None:
    """`snakemake all` on the MEDS root tmp_path/meds (one batch size, one seed, one rate)."""
    config = {**CONFIG, "train": {**CONFIG["train"], "batch_sizes": [2], "seeds": [0], "lr_grid": [1]}}
    config["data"] = {**CONFIG["data"], "source": "files", "format": "meds", "events": str(tmp_path / "meds"), **data}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "all")
    assert run.returncode == 0, run.stderr[-5000:]


ACES_TASK = """
predicates:
  admission: {code: ADMISSION}
  death: {code: DEATH}
trigger: admission
windows:
  input: {start: null, end: trigger + 1h, start_inclusive: true, end_inclusive: true, index_timestamp: end}
  target: {start: input.end, end: start + 365d, start_inclusive: false, end_inclusive: true, label: death}
"""


@pytest.mark.pipeline
def test_meds_aces_task_with_several_prediction_times_per_subject_end_to_end(tmp_path):
    """A MEDS root with codes without a value, static rows and text values; ACES writes
    the task inside the pipeline (data.task), 2 to 4 admissions, so prediction times, per
    subject: `all` trains and scores one prediction per sample, splits by subject, and
    bootstraps subjects; meds-evaluation agrees."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    from seqsetvae.data.synthetic import write_csvs
    from seqsetvae.evaluation.metrics import bootstrap_ci, cluster_of_ids
    from seqsetvae.settings import load_settings

    write_csvs(load_settings({"synthetic": CONFIG["synthetic"]}), tmp_path / "events.csv", tmp_path / "labels.csv")
    events, labels = pd.read_csv(tmp_path / "events.csv"), pd.read_csv(tmp_path / "labels.csv")
    subjects = labels.patient_id.to_numpy()
    day = {s: pd.Timestamp("2180-01-01") + pd.Timedelta(days=i) for i, s in enumerate(subjects)}
    start = events.patient_id.map(day)
    data = pd.DataFrame(
        {
            "subject_id": events.patient_id,
            "time": start + pd.to_timedelta(events.minute, unit="min"),
            "code": events.variable.astype(str),
            "numeric_value": events.value.astype("float32"),
            "text_value": None,
        }
    )
    first = data.groupby("subject_id").time.min()
    end = data.groupby("subject_id").time.max()
    rng = np.random.default_rng(0)
    admissions = [  # the first at the first event, then 1 to 3 more inside the stay, a minute apart at least
        (s, first[s] + pd.Timedelta(minutes=int(m)))
        for s in subjects
        for m in np.unique(
            np.r_[0, rng.integers(1, max(2, int((end[s] - first[s]).total_seconds() // 60)), size=rng.integers(1, 4))]
        )
    ]
    died = labels.patient_id[labels.in_hospital_mortality == 1].to_numpy()
    extra = pd.concat(
        [
            pd.DataFrame({"subject_id": subjects, "time": pd.NaT, "code": [f"SEX//{'FM'[s % 2]}" for s in subjects]}),
            pd.DataFrame(admissions, columns=["subject_id", "time"]).assign(code="ADMISSION"),
            pd.DataFrame(
                {"subject_id": subjects, "time": first[subjects].to_numpy(), "code": "NOTE", "text_value": "ok"}
            ),
            pd.DataFrame({"subject_id": died, "time": end[died].to_numpy() + pd.Timedelta(hours=2), "code": "DEATH"}),
        ]
    )
    data = pd.concat([data, extra]).sort_values(["subject_id", "time"], na_position="first")
    (tmp_path / "meds" / "data").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array(data.subject_id, pa.int64()),
                "time": pa.array(data.time, pa.timestamp("us")),
                "code": pa.array(data.code, pa.string()),
                "numeric_value": pa.array(data.numeric_value, pa.float32()),
                "text_value": pa.array(data.text_value, pa.string()),
            }
        ),
        tmp_path / "meds" / "data" / "0.parquet",
    )
    (tmp_path / "task.yaml").write_text(ACES_TASK)
    run_meds_pipeline(tmp_path, task=str(tmp_path / "task.yaml"))

    # ACES's labels, against a direct computation: one sample per admission, one hour after
    # it, positive when the subject dies within 365 days after that (every death here does)
    task = pd.read_parquet(tmp_path / "results" / "task")
    expected = sorted((int(s), t + pd.Timedelta(hours=1), bool(s in died)) for s, t in admissions)
    assert sorted(zip(task.subject_id.astype(int), task.prediction_time, task.boolean_value)) == expected
    assert task.groupby("subject_id").size().between(2, 4).all()

    qc = json.loads((tmp_path / "results" / "qc.json").read_text())
    samples = sum(split["patients"] for split in qc["by_split"].values())
    assert samples == len(task) - sum(qc["labels_dropped"].values()) and samples > 2 * len(subjects)
    assert qc["rows_copied"] > 0 and qc["rows_without_value"] >= 2 * len(subjects)
    assert qc["format_counts"] == {"static_rows": len(subjects), "text_value_not_read": len(subjects)}
    splits = pd.read_csv(tmp_path / "results" / "splits.csv", dtype=str)
    by_subject = splits.groupby(splits.patient_id.str.split("@").str[0]).split.nunique()
    assert (by_subject == 1).all() and len(by_subject) == len(subjects)  # no subject in two splits

    ours = pd.read_parquet(tmp_path / "results" / "eval" / "bs2" / "lr1" / "seed0_predictions.parquet")
    assert len(ours) == qc["by_split"]["test"]["patients"] and ours.patient_id.is_unique  # one row per sample
    metrics = json.loads((tmp_path / "results" / "eval" / "bs2" / "lr1" / "seed0.json").read_text())
    assert metrics["n_subjects"] == len(set(cluster_of_ids(ours.patient_id))) < len(ours)
    assert metrics["bootstrap"]["unit"].startswith("subject")
    resampled = bootstrap_ci(
        ours.label.to_numpy(),
        ours.probability.to_numpy(),
        metrics["bootstrap"]["resamples"],
        metrics["bootstrap"]["seed"],
        clusters=cluster_of_ids(ours.patient_id),
    )
    assert metrics["auroc_ci"] == resampled["auroc_ci"]
    report = (tmp_path / "reports" / "batch_comparison.md").read_text()
    test_subjects = len(set(cluster_of_ids(ours.patient_id)))
    assert f"test: {len(ours)} samples of {test_subjects} subjects" in report
    assert "resampling subjects with all their samples" in report

    table = pq.read_table(tmp_path / "results" / "eval" / "bs2" / "lr1" / "seed0_meds_predictions.parquet")
    assert table.num_rows == len(ours)
    keys = set(zip(task.subject_id.astype(int), task.prediction_time))
    found = set(zip(table["subject_id"].to_pylist(), pd.to_datetime(table["prediction_time"].to_pylist())))
    assert found <= keys
    meds_evaluation = pytest.importorskip("meds_evaluation.evaluate")
    import polars as pl

    scores = meds_evaluation.evaluate_binary_classification(pl.from_arrow(table))
    assert scores["samples_equally_weighted"]["roc_auc_score"] == pytest.approx(
        roc_auc_score(ours.label, ours.probability), abs=1e-6
    )


@pytest.mark.pipeline
def test_meds_dataset_through_the_pipeline_and_meds_evaluation(tmp_path):
    """A MEDS root (synthetic ICU data converted) and a task's labels: `all` builds the
    report and every run's test predictions in the MEDS layout, which meds-evaluation
    reads when it is installed."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqsetvae.data.synthetic import write_csvs
    from seqsetvae.settings import load_settings

    write_csvs(load_settings({"synthetic": CONFIG["synthetic"]}), tmp_path / "events.csv", tmp_path / "labels.csv")
    events, labels = pd.read_csv(tmp_path / "events.csv"), pd.read_csv(tmp_path / "labels.csv")
    admission = pd.Timestamp("2180-01-01") + pd.to_timedelta(events.patient_id.rank(method="dense"), unit="D")
    (tmp_path / "meds" / "data").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array(events.patient_id, pa.int64()),
                "time": pa.array(admission + pd.to_timedelta(events.minute, unit="min"), pa.timestamp("us")),
                "code": pa.array(events.variable.astype(str)),
                "numeric_value": pa.array(events.value, pa.float32()),
            }
        ),
        tmp_path / "meds" / "data" / "0.parquet",
    )
    end = events.groupby("patient_id").minute.max()
    first = admission.groupby(events.patient_id).min()
    (tmp_path / "task").mkdir()
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array(labels.patient_id, pa.int64()),
                "prediction_time": pa.array(
                    first[labels.patient_id].to_numpy()
                    + pd.to_timedelta(end[labels.patient_id].to_numpy(), unit="min"),
                    pa.timestamp("us"),
                ),
                "boolean_value": pa.array(labels.in_hospital_mortality.astype(bool)),
            }
        ),
        tmp_path / "task" / "mortality.parquet",
    )
    run_meds_pipeline(tmp_path, labels=str(tmp_path / "task"))
    qc = json.loads((tmp_path / "results" / "qc.json").read_text())
    assert qc["format"] == "meds" and qc["rows_in"] == len(events) and qc["patients_kept"] == len(labels)
    meds_predictions = tmp_path / "results" / "eval" / "bs2" / "lr1" / "seed0_meds_predictions.parquet"
    table = pq.read_table(meds_predictions)
    ours = pd.read_parquet(tmp_path / "results" / "eval" / "bs2" / "lr1" / "seed0_predictions.parquet")
    assert table.column_names == [
        "subject_id",
        "prediction_time",
        "boolean_value",
        "predicted_boolean_value",
        "predicted_boolean_probability",
    ]
    assert sorted(table["subject_id"].to_pylist()) == sorted(int(i) for i in ours.patient_id)
    assert table["prediction_time"].type == pa.timestamp("us")
    assert isinstance(table["prediction_time"][0].as_py(), datetime.datetime)

    meds_evaluation = pytest.importorskip("meds_evaluation.evaluate")
    import polars as pl
    from sklearn.metrics import roc_auc_score

    scores = meds_evaluation.evaluate_binary_classification(pl.read_parquet(meds_predictions))
    auroc = scores["samples_equally_weighted"]["roc_auc_score"]
    assert auroc == pytest.approx(roc_auc_score(ours.label, ours.probability), abs=1e-6)
