"""The whole pipeline with Snakemake on tiny synthetic data, then the report's numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_report import section_table, shown

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZES = [1, 2]
CONFIG = {
    "synthetic": {"patients": 60, "variables": 12, "mean_sets": 8, "mean_events": 24, "seed": 0},
    "data": {"split_fractions": {"train": 0.6, "valid": 0.2, "test": 0.2}},
    "embedding": {"dim": 16},
    "model": {"reduced_dim": 16, "latent_dim": 32, "levels": 1, "inducing_points": 4, "heads": 2,
              "transformer_layers": 1, "transformer_heads": 2, "ff_dim": 32,
              "beta_warmup_steps": 20, "pred_warmup_steps": 10, "recon_decay_steps": 40},
    "train": {"batch_sizes": BATCH_SIZES, "epochs": 1, "lr": 0.001, "device": "cpu"},
    "evaluate": {"bootstrap_resamples": 200, "seed": 0},
}  # fmt: skip


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.pipeline
def test_pipeline_end_to_end(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run = snakemake(tmp_path, "reports/batch_comparison.md")
    assert run.returncode == 0, run.stderr[-5000:]
    results = tmp_path / "results"
    text = (tmp_path / "reports" / "batch_comparison.md").read_text()

    speed = section_table(text, "Training speed")
    quality = section_table(text, "Test-set quality")
    memory = section_table(text, "Memory")
    for table in (speed, quality, memory):
        assert table["batch size"].astype(int).tolist() == BATCH_SIZES

    base = json.loads((results / "runs" / "bs1" / "metrics.json").read_text())
    for i, b in enumerate(BATCH_SIZES):
        train = json.loads((results / "runs" / f"bs{b}" / "metrics.json").read_text())
        evaluation = json.loads((results / "eval" / f"bs{b}.json").read_text())
        mem = json.loads((results / "memory" / f"bs{b}.json").read_text())
        assert train["batch_size"] == evaluation["batch_size"] == mem["batch_size"] == b
        row = speed.iloc[i]
        assert shown(row["patients/s"], train["patients_per_s"])
        assert shown(row["relative speed"], train["patients_per_s"] / base["patients_per_s"])
        assert shown(row["event-slot fill"], train["fill_ratio"])
        assert int(row["epochs"]) == 1 and int(row["steps"]) == train["steps"]
        row = quality.iloc[i]
        predictions = pd.read_parquet(results / "eval" / f"bs{b}_predictions.parquet")
        assert len(predictions) == evaluation["n_patients"] > 0
        if evaluation["auroc"] is not None:  # a test split of one class has no AUROC
            assert shown(row["AUROC"], evaluation["auroc"])
            assert shown(row["AUROC 95% CI"], evaluation["auroc_ci"])
        assert shown(row["Brier"], evaluation["brier"])
        assert shown(row["reconstruction"], evaluation["recon"])
        assert shown(row["KL"], evaluation["kl"])
        assert row["active units"] == f"{evaluation['active_units']['active']} / 32"
        row = memory.iloc[i]
        assert shown(row["train peak RSS (MiB)"], mem["train"]["peak_rss_mb"])
        assert mem["train"]["peak_rss_mb"] == train["peak_rss_mb"]
        assert mem["eval"]["peak_rss_mb"] == evaluation["memory"]["peak_rss_mb"]

    for name in ("throughput_memory", "training_curves", "roc_curves"):
        assert f"](figures/{name}.png)" in text
        assert (tmp_path / "reports" / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

    # everything is up to date afterwards: a second run has nothing to do
    again = snakemake(tmp_path, "-n", "reports/batch_comparison.md")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
