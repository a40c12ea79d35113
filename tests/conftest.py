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
    },
    "train": {"batch_sizes": [1, 2], "seeds": [0], "epochs": 1, "lr": 0.001, "checkpoint_every": 5, "log_every": 5,
              "device": "cpu", "validations_per_epoch": 2},
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


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory):
    """A folder with the data stages' outputs for 80 synthetic patients (test split 40%):
    `shards/`, `embedding.safetensors`, `vocab.json`, ... built by the stages' own commands."""
    import json

    from seqsetvae import cli

    r = tmp_path_factory.mktemp("small_shards")
    settings = json.dumps(
        {
            "synthetic": {"patients": 80, "variables": 10, "mean_sets": 6, "mean_events": 18, "seed": 3},
            "data": {"split_fractions": {"train": 0.5, "valid": 0.1, "test": 0.4}},
            "embedding": {"dim": 16},
        }
    )
    for argv in (
        ["synthetic", "--events", f"{r}/events.csv", "--labels", f"{r}/labels.csv"],
        ["splits", "--labels", f"{r}/labels.csv", "--out", f"{r}/splits.csv"],
        ["ingest", "--events", f"{r}/events.csv", "--labels", f"{r}/labels.csv", "--splits", f"{r}/splits.csv",
         "--out", f"{r}/events", "--threads", "1"],
        ["stats", "--events", f"{r}/events", "--stats", f"{r}/stats.json", "--vocab", f"{r}/vocab.json"],
        ["embedding", "--vocab", f"{r}/vocab.json", "--out", f"{r}/embedding.safetensors"],
        ["shards", "--events", f"{r}/events", "--stats", f"{r}/stats.json", "--vocab", f"{r}/vocab.json",
         "--out", f"{r}/shards", "--qc", f"{r}/shards_qc.json"],
    ):  # fmt: skip
        assert cli.main([argv[0], "--settings", settings, *argv[1:]]) == 0, argv
    return r
