"""A file an earlier stage wrote, damaged afterwards (truncated, emptied, overwritten with
random bytes): the stage that reads it stops with an error naming the file and the rule
that rebuilds it, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from seqsetvae import cli
from seqsetvae.errors import DamagedFile
from seqsetvae.reports.study import read_predictions

TINY = {
    "model": {
        "reduced_dim": 16,
        "latent_dim": 16,
        "levels": 1,
        "inducing_points": 4,
        "heads": 2,
        "transformer_layers": 1,
        "transformer_heads": 2,
        "ff_dim": 32,
    },
    "train": {"epochs": 1, "threads": 1, "device": "cpu", "noise_scale": {"per_epoch": 0}},
    "evaluate": {"bootstrap_resamples": 20},
}
DAMAGE = ("truncated", "empty", "random bytes", "one byte changed")


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "one byte changed":  # the last byte: a value, not the header; the file still parses
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x40]))
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())


def train_argv(r: Path) -> list[str]:
    return [
        "train",
        "--settings",
        json.dumps(TINY),
        "--shards",
        f"{r}/shards",
        "--embedding",
        f"{r}/embedding.safetensors",
        "--batch-size",
        "4",
        "--seed",
        "0",
        "--out",
        f"{r}/runs/bs4/seed0",
    ]


def evaluate_argv(r: Path) -> list[str]:
    run = f"{r}/runs/bs4/seed0"
    return [
        "evaluate",
        "--settings",
        json.dumps(TINY),
        "--shards",
        f"{r}/shards",
        "--embedding",
        f"{r}/embedding.safetensors",
        "--weights",
        f"{run}/best.safetensors",
        "--run-config",
        f"{run}/run_config.json",
        "--batch-size",
        "4",
        "--out",
        f"{r}/eval/bs4/seed0.json",
        "--predictions",
        f"{r}/eval/bs4/seed0_predictions.parquet",
    ]


def shards_argv(r: Path) -> list[str]:
    return [
        "shards",
        "--events",
        f"{r}/events",
        "--stats",
        f"{r}/stats.json",
        "--vocab",
        f"{r}/vocab.json",
        "--out",
        f"{r}/shards_again",
        "--qc",
        f"{r}/shards_again_qc.json",
    ]


def baseline_argv(r: Path) -> list[str]:
    settings = {"baseline": {"models": ["logistic_regression"]}, "evaluate": {"bootstrap_resamples": 20}}
    return [
        "baseline",
        "--settings",
        json.dumps(settings),
        "--shards",
        f"{r}/shards",
        "--vocab",
        f"{r}/vocab.json",
        "--out-dir",
        f"{r}/baselines",
    ]


# (file, the rule that writes it, the stage that reads it)
CASES = [
    ("shards/train/shard-00000.safetensors", "make_shards", train_argv),
    ("shards/valid/shard-00000.safetensors", "make_shards", train_argv),
    ("shards/train/index.json", "make_shards", train_argv),
    ("shards/index.json", "make_shards", train_argv),
    ("embedding.safetensors", "embedding", train_argv),
    ("shards/test/shard-00000.safetensors", "make_shards", evaluate_argv),
    ("runs/bs4/seed0/best.safetensors", "train", evaluate_argv),
    ("runs/bs4/seed0/run_config.json", "train", evaluate_argv),
    ("stats.json", "stats", shards_argv),
    ("vocab.json", "stats", shards_argv),
    ("events/patients.parquet", "ingest", shards_argv),
    ("vocab.json", "stats", baseline_argv),
    ("shards/train/shard-00000.safetensors", "make_shards", baseline_argv),
]


@pytest.fixture(scope="module")
def trained(small_shards, tmp_path_factory):
    """small_shards plus one trained run (runs/bs4/seed0)."""
    root = tmp_path_factory.mktemp("trained") / "r"
    shutil.copytree(small_shards, root)
    assert cli.main(train_argv(root)) == 0
    return root


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize(("name", "writer", "argv"), CASES, ids=[f"{c[0]}-{c[2].__name__[:-5]}" for c in CASES])
def test_a_damaged_file_is_named_with_the_rule_that_rebuilds_it(trained, tmp_path, capsys, name, writer, argv, how):
    root = tmp_path / "r"
    shutil.copytree(trained, root)
    if argv is train_argv:  # a fresh run reads its inputs from the start
        shutil.rmtree(root / "runs")
    damage(root / name, how)
    capsys.readouterr()
    assert cli.main(argv(root)) == 1
    error = capsys.readouterr().err
    assert f"error: {root / name}: damaged or unreadable file" in error
    assert f"rebuild it with `snakemake --forcerun {writer} <your target>`" in error
    assert "Traceback" not in error
    for output in ("runs", "eval", "baselines", "shards_again", "shards_again_qc.json"):
        produced = root / output
        if output == "runs" and argv is not train_argv or output == "eval" and argv is not evaluate_argv:
            continue
        assert not (produced / "bs4" / "seed0.json").exists() and not (produced / "bs4/seed0/metrics.json").exists()
        if output in ("shards_again", "shards_again_qc.json", "baselines"):
            assert not produced.exists() or not any(p.suffix in (".json", ".parquet") for p in produced.rglob("*"))


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_predictions_are_named_for_the_report(trained, tmp_path, how):
    root = tmp_path / "r"
    shutil.copytree(trained, root)
    assert cli.main(evaluate_argv(root)) == 0
    predictions = root / "eval" / "bs4" / "seed0_predictions.parquet"
    assert len(read_predictions(predictions)) > 0
    damage(predictions, how)
    with pytest.raises(DamagedFile, match="written by the `evaluate` rule"):
        read_predictions(predictions)


def test_a_shard_file_of_other_patients_is_caught(trained, tmp_path, capsys):
    """Whole and readable, but not the file the index describes (e.g. a stale copy)."""
    root = tmp_path / "r"
    shutil.copytree(trained, root)
    shutil.rmtree(root / "runs")
    shutil.copyfile(root / "shards/test/shard-00000.safetensors", root / "shards/train/shard-00000.safetensors")
    assert cli.main(train_argv(root)) == 1
    error = capsys.readouterr().err
    assert "shards/train/shard-00000.safetensors: damaged or unreadable file" in error
    assert "where train/index.json says" in error
