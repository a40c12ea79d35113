"""The learning-rate grid: `seqsetvae choose-lr` on run summaries, and a choice that the
test split cannot move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_train import DIM, VOCAB, _run, _write_split

from seqsetvae import cli
from seqsetvae.batching import random_patients
from seqsetvae.errors import InputError
from seqsetvae.training.lr_grid import choose, multiplier_tag


def summary(
    multiplier: float,
    seed: int,
    auroc: float | None,
    loss: float = 0.5,
    batch_size: int = 4,
    ce: float | None = None,
    keep: str | None = None,
) -> tuple[Path, dict]:
    path = Path(f"grid_runs/bs{batch_size}/lr{multiplier:g}/seed{seed}/metrics.json")
    best = {"val_auroc": auroc, "val_loss": loss, "val_ce": ce}
    return path, {
        **({"keep_weights": keep} if keep else {}),  # absent in runs of earlier versions
        "batch_size": batch_size,
        "seed": seed,
        "lr_multiplier": multiplier,
        "lr": 1e-3 * multiplier,
        "epochs": 1,
        "best": best,
    }


def test_the_best_seed_mean_validation_auroc_is_chosen():
    # seed 0 alone would choose x2; the mean over both seeds chooses x1
    runs = [
        summary(0.5, 0, 0.70),
        summary(0.5, 1, 0.70),
        summary(1.0, 0, 0.74),
        summary(1.0, 1, 0.78),
        summary(2.0, 0, 0.80),
        summary(2.0, 1, 0.60),
    ]
    choice = choose(4, [0.5, 1.0, 2.0], runs)
    assert choice["chosen"] == {
        "multiplier": 1.0,
        "tag": "1",
        "peak_lr": 1e-3,
        "val_auroc_mean": pytest.approx(0.76),
        "val_ce_mean": None,
    }
    assert [c["val_auroc_mean"] for c in choice["candidates"]] == pytest.approx([0.70, 0.76, 0.70])
    assert choice["edge"] is None and choice["seeds"] == [0, 1] and choice["grid"] == [0.5, 1.0, 2.0]


def test_runs_keeping_the_lowest_cross_entropy_are_compared_on_it():
    keep = "lowest_cross_entropy"
    runs = [summary(0.5, 0, 0.80, ce=0.30, keep=keep), summary(1.0, 0, 0.70, ce=0.20, keep=keep)]
    runs += [summary(2.0, 0, 0.75, ce=0.20, keep=keep)]  # level with x1 on cross-entropy, higher AUROC
    choice = choose(4, [0.5, 1.0, 2.0], runs)
    assert choice["chosen"]["multiplier"] == 2.0 and choice["chosen"]["val_ce_mean"] == pytest.approx(0.20)
    assert choice["rule"].startswith("the lowest seed-mean validation cross-entropy")
    assert choice["criterion"] == "cross_entropy"
    # the default rule on the same runs: AUROC
    runs = [summary(0.5, 0, 0.80, ce=0.30), summary(1.0, 0, 0.70, ce=0.20), summary(2.0, 0, 0.75, ce=0.20)]
    assert choose(4, [0.5, 1.0, 2.0], runs)["chosen"]["multiplier"] == 0.5
    assert choose(4, [0.5, 1.0, 2.0], runs)["criterion"] == "auroc"
    with pytest.raises(InputError, match=r"mixes runs that keep different points: \['best_auroc', 'last'\]"):
        choose(4, [1.0, 2.0], [summary(1.0, 0, 0.7, keep="last"), summary(2.0, 0, 0.8, keep="best_auroc")])


def test_ties_go_to_the_lower_validation_loss_then_to_the_rate_closer_to_the_rule():
    runs = [summary(0.5, 0, 0.8, loss=0.40), summary(1.0, 0, 0.8, loss=0.45), summary(2.0, 0, 0.8, loss=0.40)]
    assert choose(4, [0.5, 1.0, 2.0], runs)["chosen"]["multiplier"] == 0.5  # x0.5 and x2 equally far from x1: the first
    runs = [summary(0.5, 0, 0.8, loss=0.45), summary(1.0, 0, 0.8, loss=0.45), summary(2.0, 0, 0.8, loss=0.40)]
    assert choose(4, [0.5, 1.0, 2.0], runs)["chosen"]["multiplier"] == 2.0
    runs = [summary(0.25, 0, 0.8), summary(1.0, 0, 0.8), summary(2.0, 0, 0.8)]
    assert choose(4, [0.25, 1.0, 2.0], runs)["chosen"]["multiplier"] == 1.0


def test_a_choice_at_either_end_of_the_grid_is_flagged_and_a_run_without_auroc_ranks_last():
    runs = [summary(0.5, 0, None), summary(1.0, 0, 0.7), summary(2.0, 0, 0.9)]
    choice = choose(4, [0.5, 1.0, 2.0], runs)
    assert choice["chosen"]["multiplier"] == 2.0 and choice["edge"] == "highest"
    assert choice["candidates"][0]["val_auroc_mean"] is None
    runs = [summary(0.5, 0, 0.9), summary(1.0, 0, 0.7), summary(2.0, 0, 0.8)]
    assert choose(4, [0.5, 1.0, 2.0], runs)["edge"] == "lowest"
    assert choose(4, [1.0], [])["edge"] is None and choose(4, [1.0], [])["chosen"]["multiplier"] == 1.0


def test_an_incomplete_or_foreign_grid_is_an_input_error():
    with pytest.raises(InputError, match=r"no run of multiplier 2 at seed\(s\) \[1\]"):
        choose(4, [1.0, 2.0], [summary(1.0, 0, 0.7), summary(1.0, 1, 0.7), summary(2.0, 0, 0.8)])
    with pytest.raises(InputError, match=r"bs8/lr1/seed0/metrics.json: a run of batch size 8, expected 4"):
        choose(4, [1.0, 2.0], [summary(1.0, 0, 0.7, batch_size=8)])
    with pytest.raises(InputError, match=r"multiplier 3 is not in the grid"):
        choose(4, [1.0, 2.0], [summary(3.0, 0, 0.7)])
    assert [multiplier_tag(m) for m in (0.5, 1, 2.0, 0.25)] == ["0.5", "1", "2", "0.25"]


def _shards(root: Path, flip_test_labels: bool) -> tuple[Path, Path]:
    """Train, valid and test splits; the second copy differs only in its test labels."""
    shards = root / "shards"
    common = {"mean_sets": 5, "mean_events": 12, "vocab_size": VOCAB, "max_set_size": 5}
    _write_split(shards, "train", random_patients(22, seed=1, **common))
    for split, seed in (("valid", 2), ("test", 5)):
        patients = random_patients(12, seed=seed, **common)
        patients.labels[:] = np.arange(12) % 2
        if split == "test" and flip_test_labels:
            patients.labels[:] = 1 - patients.labels
        _write_split(shards, split, patients)
    (shards / "index.json").write_text(json.dumps({"vocab_size": VOCAB}))
    embedding = root / "embedding.safetensors"
    save_file({"embedding": torch.randn(VOCAB, DIM, generator=torch.Generator().manual_seed(0))}, str(embedding))
    return shards, embedding


def test_a_test_split_that_would_change_the_choice_does_not(tmp_path):
    """Each rate trained on two datasets that differ only in the test split's labels (all
    flipped): the test AUROC ranks the rates the other way round on the second, the grid
    runs' summaries and the choice are the same."""
    grid = [0.5, 2.0]
    choices, test_best = [], []
    for flipped in (False, True):
        root = tmp_path / ("flipped" if flipped else "original")
        shards, embedding = _shards(root, flipped)
        summaries, test_auroc = [], {}
        for m in grid:
            run = root / "grid_runs" / "bs4" / f"lr{m:g}" / "seed3"
            assert _run((shards, embedding), run, 4, ["--lr-multiplier", str(m)], epochs=1) == 0  # seed 3
            assert (
                cli.main(
                    [
                        "evaluate",
                        "--settings",
                        json.dumps({"evaluate": {"bootstrap_resamples": 20}}),
                        "--shards",
                        str(shards),
                        "--embedding",
                        str(embedding),
                        "--weights",
                        str(run / "best.safetensors"),
                        "--run-config",
                        str(run / "run_config.json"),
                        "--batch-size",
                        "4",
                        "--out",
                        str(run / "test.json"),
                        "--predictions",
                        str(run / "test.parquet"),
                    ]
                )
                == 0
            )
            test_auroc[m] = json.loads((run / "test.json").read_text())["auroc"]
            summaries.append(str(run / "metrics.json"))
        out = root / "lr_grid" / "bs4.json"
        assert (
            cli.main(
                ["choose-lr", "--batch-size", "4", "--grid", *map(str, grid), "--runs", *summaries, "--out", str(out)]
            )
            == 0
        )
        choices.append(json.loads(out.read_text()))
        test_best.append(max(grid, key=test_auroc.get))
        assert test_auroc[0.5] != pytest.approx(test_auroc[2.0])
    assert test_best[0] != test_best[1]  # chosen on test, the flipped labels would flip the choice
    assert choices[0] == choices[1] and choices[0]["chosen"]["multiplier"] in grid
