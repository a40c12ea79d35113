"""seqsetvae evaluate: metrics against direct computation, bootstrap, active units."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, roc_auc_score

from seqsetvae.errors import InputError
from seqsetvae.evaluation import evaluate
from seqsetvae.evaluation.metrics import ActiveUnits, auprc_rows, auroc_rows, bootstrap_ci, classification_metrics
from seqsetvae.model import LossWeights
from seqsetvae.settings import load_settings

MODEL = {
    "reduced_dim": 16,
    "latent_dim": 16,
    "levels": 1,
    "inducing_points": 4,
    "heads": 2,
    "transformer_layers": 1,
    "transformer_heads": 2,
    "ff_dim": 32,
}


# -- metrics --------------------------------------------------------------------------


def test_vectorised_auroc_auprc_equal_sklearn_per_row_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (300, 25))
    scores = np.round(rng.random((300, 25)), 1)  # many ties
    labels[0] = 0  # one single-class row
    auroc, auprc = auroc_rows(labels, scores), auprc_rows(labels, scores)
    assert np.isnan(auroc[0]) and np.isnan(auprc[0])
    for r in range(1, 300):
        assert auroc[r] == pytest.approx(roc_auc_score(labels[r], scores[r]), abs=1e-12)
        assert auprc[r] == pytest.approx(average_precision_score(labels[r], scores[r]), abs=1e-12)


def test_bootstrap_is_seeded_counts_skips_and_contains_the_estimate():
    rng = np.random.default_rng(1)
    labels = np.zeros(40, dtype=int)
    labels[:4] = 1  # few positives: some resamples have none
    probabilities = 0.2 * labels + 0.8 * rng.random(40)
    first, again = bootstrap_ci(labels, probabilities, 500, seed=7), bootstrap_ci(labels, probabilities, 500, seed=7)
    assert first == again
    assert bootstrap_ci(labels, probabilities, 500, seed=8)["auroc_ci"] != first["auroc_ci"]

    # the same draw by hand: skipped = resamples with one class; CI = percentiles of the rest
    indices = np.random.default_rng(7).integers(0, 40, size=(500, 40))
    drawn = labels[indices]
    one_class = (drawn.sum(1) == 0) | (drawn.sum(1) == 40)
    assert one_class.any() and first["skipped_single_class"] == int(one_class.sum())
    by_hand = [roc_auc_score(drawn[r], probabilities[indices[r]]) for r in np.flatnonzero(~one_class)]
    assert first["auroc_ci"] == pytest.approx(np.percentile(by_hand, [2.5, 97.5]), abs=1e-12)

    metrics = classification_metrics(labels, probabilities, 500, 7)
    assert metrics["auroc_ci"][0] <= metrics["auroc"] <= metrics["auroc_ci"][1]
    assert metrics["auprc_ci"][0] <= metrics["auprc"] <= metrics["auprc_ci"][1]


def test_active_units_constructed_case():
    rng = np.random.default_rng(2)
    n, std = 3000, np.array([0.0, 0.05, 0.08, 0.12, 0.3, 1.0, 2.0, 0.001])  # variance > 0.01 from 0.12 on
    mu = 5.0 + rng.standard_normal((n, len(std))) * std  # large mean: the streaming update must not lose precision
    units = ActiveUnits()
    for chunk in np.array_split(mu, [1, 7, 500, 501, 2000]):  # uneven batches, two of one set
        units.update(chunk)
    units.update(mu[:0])  # a batch without sets changes nothing
    assert units.variance == pytest.approx(mu.var(axis=0), rel=1e-9, abs=1e-12)
    assert units.summary() == {"active": 4, "units": 8, "threshold": 0.01, "sets": n}


# -- the evaluation stage on real shards ----------------------------------------------


@pytest.fixture(scope="module")
def trained(small_shards):
    """Shards of 80 synthetic patients and an untrained small model's run files."""
    from seqsetvae.model import ModelConfig, SeqSetVAE
    from seqsetvae.runtime.weights import save_weights

    r = small_shards
    from safetensors.torch import load_file

    embedding = load_file(f"{r}/embedding.safetensors")["embedding"]
    torch.manual_seed(0)
    model = SeqSetVAE(ModelConfig.from_settings(MODEL), embedding)
    save_weights(model, r / "best.safetensors", {"epoch": 1, "step": 12})
    run_config = {"model": MODEL, "train": {"device": "cpu", "batch_sizes": [3]}, "batch_size": 3}
    (r / "run_config.json").write_text(json.dumps(run_config))
    return r


def run_evaluate(root, batch_size: int, name: str, resamples: int = 300):
    run_config = json.loads((root / "run_config.json").read_text())
    run_config["batch_size"] = batch_size
    (root / f"run_config_{name}.json").write_text(json.dumps(run_config))
    argv = [
        "--settings",
        json.dumps({"evaluate": {"bootstrap_resamples": resamples, "seed": 0}}),
        "--shards",
        str(root / "shards"),
        "--embedding",
        str(root / "embedding.safetensors"),
        "--weights",
        str(root / "best.safetensors"),
        "--run-config",
        str(root / f"run_config_{name}.json"),
        "--batch-size",
        str(batch_size),
        "--out",
        str(root / f"{name}.json"),
        "--predictions",
        str(root / f"{name}.parquet"),
        "--threads",
        "1",
    ]
    assert evaluate.main(argv) == 0
    return json.loads((root / f"{name}.json").read_text()), pd.read_parquet(root / f"{name}.parquet")


def test_json_metrics_equal_sklearn_on_the_predictions(trained):
    from seqsetvae.data.reader import ShardReader

    metrics, predictions = run_evaluate(trained, 3, "bs3")
    reader = ShardReader(str(trained / "shards"), "test")
    assert predictions.columns.tolist() == ["patient_id", "label", "probability"]
    assert predictions.patient_id.tolist() == list(reader.patient_ids)
    assert predictions.label.tolist() == list(reader.labels)
    y, p = predictions.label.to_numpy(), predictions.probability.to_numpy()
    assert 0 < y.sum() < len(y) and np.all((p >= 0) & (p <= 1))
    assert metrics["n_patients"] == len(y) and metrics["n_positive"] == int(y.sum())
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert metrics["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert metrics["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, p > 0.5), abs=1e-12)
    assert metrics["positive_rate"] == pytest.approx(
        {"observed": y.mean(), "predicted": (p > 0.5).mean(), "mean_probability": p.mean()}
    )
    assert metrics["auroc_ci"] == pytest.approx(bootstrap_ci(y, p, 300, 0)["auroc_ci"], abs=1e-12)
    assert metrics["auroc_ci"][0] <= metrics["auroc"] <= metrics["auroc_ci"][1]
    assert metrics["checkpoint"] == {"epoch": 1, "step": 12}
    assert metrics["largest_batch"]["patients"] == 3
    assert metrics["inference"]["patients_per_s"] > 0 and metrics["memory"]["peak_rss_mb"] > 0


def test_predictions_and_loss_terms_do_not_depend_on_the_batch_size(trained):
    """Per-set means and per-patient probabilities: bs1 == bs7 == a direct computation."""
    from seqsetvae.batching import collate
    from seqsetvae.data.reader import ShardReader

    one, p1 = run_evaluate(trained, 1, "bs1")
    seven, p7 = run_evaluate(trained, 7, "bs7")
    np.testing.assert_allclose(p1.probability, p7.probability, rtol=0, atol=1e-5)
    for key in ("recon", "kl", "kl_free_bits"):
        assert one[key] == pytest.approx(seven[key], rel=1e-5)
    assert one["active_units"] == seven["active_units"]

    # directly: every test patient in one batch, through the saved weights
    run_config = json.loads((trained / "run_config.json").read_text())
    from safetensors.torch import load_file

    embedding = load_file(str(trained / "embedding.safetensors"))["embedding"]
    model = evaluate.load_model(run_config, embedding, trained / "best.safetensors", torch.device("cpu"))
    reader = ShardReader(str(trained / "shards"), "test")
    with torch.no_grad():
        out = model(collate(reader.take(np.arange(len(reader)))), LossWeights.at_evaluation(load_settings({})["model"]))
    np.testing.assert_allclose(torch.softmax(out.logits, -1)[:, 1].numpy(), p1.probability, atol=1e-5)
    assert one["recon"] == pytest.approx(float(out.recon_per_set.mean()), rel=1e-5)
    assert one["kl"] == pytest.approx(float(out.kl_raw_per_set.mean()), rel=1e-5)
    assert one["kl_free_bits"] == pytest.approx(float(out.kl_per_set.mean()), rel=1e-5)
    variance = out.mu.double().var(dim=0, unbiased=False).numpy()
    assert one["active_units"]["units"] == MODEL["latent_dim"]
    assert one["active_units"]["sets"] == int(reader.n_sets.sum())
    assert one["active_units"]["active"] == int((variance > 0.01).sum())


def test_mismatched_batch_size_is_an_input_error(trained):
    argv = [
        "--shards",
        str(trained / "shards"),
        "--embedding",
        str(trained / "embedding.safetensors"),
        "--weights",
        str(trained / "best.safetensors"),
        "--run-config",
        str(trained / "run_config.json"),
        "--batch-size",
        "5",
        "--out",
        str(trained / "bad.json"),
        "--predictions",
        str(trained / "bad.parquet"),
    ]
    with pytest.raises(InputError, match=r"run_config\.json: batch_size is 3, but --batch-size is 5"):
        evaluate.main(argv)
    assert not (trained / "bad.json").exists() and not (trained / "bad.parquet").exists()


def test_weights_of_another_model_are_an_input_error(trained, tmp_path):
    config = json.loads((trained / "run_config.json").read_text())
    config["model"] = {**MODEL, "latent_dim": 32}
    (tmp_path / "run_config.json").write_text(json.dumps(config))
    argv = [
        "--shards",
        str(trained / "shards"),
        "--embedding",
        str(trained / "embedding.safetensors"),
        "--weights",
        str(trained / "best.safetensors"),
        "--run-config",
        str(tmp_path / "run_config.json"),
        "--batch-size",
        "3",
        "--out",
        str(tmp_path / "e.json"),
        "--predictions",
        str(tmp_path / "e.parquet"),
    ]
    with pytest.raises(InputError, match=r"best\.safetensors: weights do not match the model of the run config"):
        evaluate.main(argv)
    assert not (tmp_path / "e.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_an_evaluation_job_given_gpus_without_one_fails_at_once(trained):
    argv = [
        "--shards",
        str(trained / "shards"),
        "--embedding",
        str(trained / "embedding.safetensors"),
        "--weights",
        str(trained / "best.safetensors"),
        "--run-config",
        str(trained / "run_config.json"),
        "--batch-size",
        "3",
        "--out",
        str(trained / "gpu.json"),
        "--predictions",
        str(trained / "gpu.parquet"),
        "--gpus",
        "1",
    ]
    with pytest.raises(InputError, match=r"this job was given 1 GPU\(s\).*no CUDA device is visible"):
        evaluate.main(argv)
    assert not (trained / "gpu.json").exists()
