"""train.head_refit: regression: the kept weights' linear head replaced by an L2 logistic
regression on the train split's readout features, C chosen on validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from test_train import _lines, _run, data  # noqa: F401  (the tiny shards fixture)

from seqsetvae.training.head_refit import fit_head


def _features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) * [1, 2, 3, 1, 5, 1] + [0, 1, -2, 0, 3, 0]
    y = (x[:, 0] - 0.5 * x[:, 2] / 3 + rng.normal(size=n) > 0).astype(np.int64)
    return x, y


def test_the_refitted_head_scores_as_the_regression_on_raw_features():
    """The head's weight [2, F] and bias [2] give logit differences equal to the chosen
    regression's decision function on the unstandardised features; C is the grid's best
    on validation (the first on ties)."""
    train_set, valid_set = _features(400, 0), _features(200, 1)
    grid = [0.001, 0.1, 10.0]
    fitted = fit_head(train_set, valid_set, 0.5, grid, {0: 1.0, 1: 2.0})
    scaler = StandardScaler().fit(train_set[0])
    aurocs = []
    for c in grid:
        regression = LogisticRegression(C=c, max_iter=2000, class_weight={0: 1.0, 1: 2.0})
        regression.fit(scaler.transform(train_set[0]), train_set[1])
        aurocs.append(roc_auc_score(valid_set[1], regression.decision_function(scaler.transform(valid_set[0]))))
        if c == fitted["c"]:
            expected = regression.decision_function(scaler.transform(valid_set[0]))
    assert fitted["c"] == grid[int(np.argmax(aurocs))]
    assert fitted["val_auroc_network"] == pytest.approx(max(aurocs))
    logits = valid_set[0] @ fitted["weight"].T + fitted["bias"]
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(logits.sum(1), 0.0, atol=1e-9)  # split symmetrically


def test_the_run_keeps_its_own_head_when_no_regression_ranks_validation_higher():
    train_set, valid_set = _features(400, 0), _features(200, 1)
    perfect = 1.0  # the current head already ranks validation perfectly
    assert fit_head(train_set, valid_set, perfect, [0.01, 1.0], None) is None


def test_a_refitted_run_trains_as_before_and_keeps_the_refitted_head(data, tmp_path):  # noqa: F811
    """The run's training and final weights are the plain run's; best.safetensors differs
    only in the head and the stack, scores validation as the head_refit line says, and
    the kept point in metrics.json carries that score."""
    from seqsetvae.evaluation.evaluate import load_model
    from seqsetvae.model import LossWeights
    from seqsetvae.runtime.dataset import ShardBatches
    from seqsetvae.runtime.device import load_embedding
    from seqsetvae.settings import load_settings

    common = {
        "model": {"wide": "summaries", "wide_combine": "standardized"},
        "wide_start": "regression",
        "wide_lr_factor": 0.0,
        "wide_start_c_grid": [0.001, 0.01, 0.1, 1.0, 10.0],
        "keep_weights": "last",
    }
    assert _run(data, tmp_path / "plain", **common) == 0
    assert _run(data, tmp_path / "refit", head_refit="regression", **common) == 0
    plain, refit = (load_file(str(tmp_path / r / "final.safetensors")) for r in ("plain", "refit"))
    assert all(torch.equal(plain[k], refit[k]) for k in plain)
    line = [x for x in _lines(tmp_path / "refit") if x["kind"] == "head_refit"]
    assert len(line) == 1 and line[0]["c"] in common["wide_start_c_grid"]
    assert line[0]["val_auroc_network"] > line[0]["before"]["val_auroc_network"]  # kept only when higher
    kept_plain, kept = (load_file(str(tmp_path / r / "best.safetensors")) for r in ("plain", "refit"))
    changed = {k for k in kept if not torch.equal(kept[k], kept_plain[k])}
    assert {"classifier.mlp.1.weight", "classifier.mlp.1.bias"} <= changed
    assert changed <= {
        "classifier.mlp.1.weight",
        "classifier.mlp.1.bias",
        "classifier.stack_weights",
        "classifier.stack_bias",
    }
    shards, embedding = data
    run_config = json.loads((tmp_path / "refit" / "run_config.json").read_text())
    model = load_model(
        run_config, load_embedding(embedding), tmp_path / "refit" / "best.safetensors", torch.device("cpu")
    )
    valid = ShardBatches(str(shards), "valid")
    with torch.no_grad():
        out = model(
            valid(np.arange(len(valid))),
            LossWeights.at_evaluation(load_settings({"model": run_config["model"]})["model"]),
        )
    network = torch.softmax(out.paths[:, 0], -1)[:, 1].numpy()
    assert roc_auc_score(valid.labels, network) == pytest.approx(line[0]["val_auroc_network"])
    assert roc_auc_score(valid.labels, torch.softmax(out.logits, -1)[:, 1]) == pytest.approx(line[0]["val_auroc"])
    metrics = json.loads((tmp_path / "refit" / "metrics.json").read_text())
    assert metrics["best"]["val_auroc"] == pytest.approx(line[0]["val_auroc"])


def test_the_refit_needs_a_linear_head(data, tmp_path):  # noqa: F811
    from seqsetvae.errors import InputError

    with pytest.raises(InputError, match="model.head: linear"):
        _run(data, tmp_path / "run", model={"head": "mlp"}, head_refit="regression")
