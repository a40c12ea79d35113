"""Shared test fixtures: small files on disk, small synthetic raw data."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The tests' one tiny pipeline configuration (.test/config.yaml: the whole pipeline in
# about a minute on 2 CPU cores), less its output folders: each test writes the config
# into its own working directory, where results/ and reports/ land.
TINY_PIPELINE_CONFIG = {
    key: value
    for key, value in yaml.safe_load((REPO / ".test" / "config.yaml").read_text()).items()
    if key not in ("results", "reports")
}


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
        [
            "ingest",
            "--events",
            f"{r}/events.csv",
            "--labels",
            f"{r}/labels.csv",
            "--splits",
            f"{r}/splits.csv",
            "--out",
            f"{r}/events",
            "--threads",
            "1",
        ],
        ["stats", "--events", f"{r}/events", "--stats", f"{r}/stats.json", "--vocab", f"{r}/vocab.json"],
        ["embedding", "--vocab", f"{r}/vocab.json", "--out", f"{r}/embedding.safetensors"],
        [
            "shards",
            "--events",
            f"{r}/events",
            "--stats",
            f"{r}/stats.json",
            "--vocab",
            f"{r}/vocab.json",
            "--out",
            f"{r}/shards",
            "--qc",
            f"{r}/shards_qc.json",
        ],
    ):
        assert cli.main([argv[0], "--settings", settings, *argv[1:]]) == 0, argv
    return r
