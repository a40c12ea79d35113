"""Shared test fixtures: small files on disk, small synthetic raw data."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest

# The whole pipeline in about a minute on 2 CPU cores: 60 small synthetic patients, a
# small model, 1 epoch, batch sizes 1 and 2, CPU, 1-CPU cluster jobs. Used by the
# Snakemake end-to-end and SLURM tests (a config.yaml for `snakemake --configfile`).
TINY_PIPELINE_CONFIG = {
    "synthetic": {"patients": 60, "variables": 12, "mean_sets": 8, "mean_events": 24, "seed": 0},
    "data": {"split_fractions": {"train": 0.6, "valid": 0.2, "test": 0.2}},
    "embedding": {"dim": 16},
    "shards": {"shard_size": 16},
    "model": {
        "reduced_dim": 16, "latent_dim": 32, "levels": 1, "inducing_points": 4, "heads": 2,
        "transformer_layers": 1, "transformer_heads": 2, "ff_dim": 32,
        "beta_warmup_steps": 20, "pred_warmup_steps": 10, "recon_decay_steps": 40,
    },
    "train": {"batch_sizes": [1, 2], "epochs": 1, "lr": 0.001, "checkpoint_every": 5, "log_every": 5, "device": "cpu"},
    "evaluate": {"bootstrap_resamples": 200, "seed": 0},
    "resources": {
        "data": {"mem_mb": 500, "runtime": 10, "threads": 1},
        "train": {"mem_mb": 1000, "runtime": 10, "threads": 1, "gpus": 0},
        "evaluate": {"mem_mb": 1000, "runtime": 10, "threads": 1, "gpus": 0},
    },
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_pipeline_config():
    """tiny_pipeline_config() -> a fresh copy of TINY_PIPELINE_CONFIG to adapt and write."""
    return lambda: copy.deepcopy(TINY_PIPELINE_CONFIG)


@pytest.fixture
def write_text(tmp_path):
    """write_text(name, text) -> Path: a file under tmp_path with dedented text."""

    def write(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory):
    """(events.csv, labels.csv, settings) of 80 synthetic patients (default columns)."""
    from seqsetvae.data.synthetic import write_csvs
    from seqsetvae.settings import load_settings

    root = tmp_path_factory.mktemp("synthetic_raw")
    settings = load_settings({"synthetic": {"patients": 80, "seed": 1}})
    write_csvs(settings, root / "events.csv", root / "labels.csv")
    return root / "events.csv", root / "labels.csv", settings
