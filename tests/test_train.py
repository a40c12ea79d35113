"""`seqsetvae train` on tiny shards: outputs, determinism, checkpoint/resume equality."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from seqsetvae.batching import random_patients
from seqsetvae.data.ragged import RaggedPatients
from seqsetvae.errors import InputError
from seqsetvae.runtime.device import resolve_threads
from seqsetvae.settings import load_settings
from seqsetvae.training import train
from seqsetvae.training.schedule import lr_factor

VOCAB, DIM = 12, 16
TINY_MODEL = {
    "reduced_dim": 16,
    "latent_dim": 16,
    "levels": 1,
    "inducing_points": 4,
    "heads": 2,
    "transformer_layers": 1,
    "transformer_heads": 2,
    "ff_dim": 32,
    "beta_warmup_steps": 4,
    "pred_warmup_steps": 4,
    "recon_decay_steps": 8,
    "token": "value_and_variable",
    "readout": "centered",
    "head": "linear",  # config.yaml's (the readout's running mean is state)
}
TINY_TRAIN = {
    "epochs": 2,
    "lr": 0.003,
    "checkpoint_every": 3,
    "log_every": 2,
    "threads": 1,
    "device": "cpu",
    "seeds": [3],
    "validations_per_epoch": 2,
    "noise_scale": {"per_epoch": 1, "patients": 4},
    "weight_average_epochs": 0.5,
}
STEP_KEYS = {
    "kind",
    "epoch",
    "step",
    "samples",
    "epochs",
    "loss",
    "recon",
    "kl",
    "ce",
    "grad_norm",
    "beta",
    "lr",
    "recon_weight",
    "pred_weight",
    "patients_per_s",
    "events_per_s",
    "fill_ratio",
    "sequence_fill_ratio",
    "batch_patients",
    "batch_events",
    "batch_sets",
}
EPOCH_KEYS = {"kind", "epoch", "step", "train_loss", "wall_time_s", "compiled_graphs"}
VALIDATION_KEYS = {
    "kind",
    "validation",
    "step",
    "samples",
    "epochs",
    "train_loss",
    "val_loss",
    "val_ce",
    "val_auroc",
    "val_auprc",
    "train_time_s",
    "wall_time_s",
}
NOISE_KEYS = {
    "kind",
    "step",
    "epochs",
    "b_small",
    "b_big",
    "sq_norm_small",
    "sq_norm_big",
    "gradient_sq",
    "trace_sigma",
}
TIMING = {"patients_per_s", "events_per_s", "wall_time_s", "train_time_s"}


def _write_split(root: Path, split: str, patients: RaggedPatients) -> None:
    """One shard file in the documented layout (docs/design.md, "Shards")."""
    order = np.lexsort((np.array(patients.patient_ids), patients.events_per_patient()))
    p = patients.take(order)  # sorted by (n_events, patient_id), as the shards stage does
    n_events, n_sets = p.events_per_patient(), p.sets_per_patient()
    id_bytes = [i.encode() for i in p.patient_ids]
    (root / split).mkdir(parents=True)
    save_numpy(
        {
            "variable_ids": p.variable_ids,
            "values": p.values,
            "set_times": p.set_times,
            "set_offsets": p.set_offsets,
            "patient_offsets": p.patient_offsets,
            "labels": p.labels,
            "patient_id_bytes": np.frombuffer(b"".join(id_bytes), dtype=np.uint8).copy(),
            "patient_id_offsets": np.concatenate([[0], np.cumsum([len(b) for b in id_bytes])]).astype(np.int64),
        },
        str(root / split / "shard-00000.safetensors"),
    )
    n = p.n_patients
    index = {
        "split": split,
        "n_patients": n,
        "n_sets": int(n_sets.sum()),
        "n_events": int(n_events.sum()),
        "shards": [
            {
                "file": "shard-00000.safetensors",
                "n_patients": n,
                "n_sets": int(n_sets.sum()),
                "n_events": int(n_events.sum()),
            }
        ],
        "patients": {
            "patient_id": p.patient_ids,
            "label": p.labels.tolist(),
            "n_events": n_events.tolist(),
            "n_sets": n_sets.tolist(),
            "shard": [0] * n,
            "row": list(range(n)),
        },
    }
    (root / split / "index.json").write_text(json.dumps(index))


def test_take_gathers_whole_patients_in_order():
    patients = random_patients(5, mean_sets=3, mean_events=7, vocab_size=VOCAB, seed=4)
    picked = patients.take(np.array([3, 0]))
    picked.validate()
    assert picked.patient_ids == [patients.patient_ids[3], patients.patient_ids[0]]
    for new, old in ((0, 3), (1, 0)):
        sets = slice(patients.patient_offsets[old], patients.patient_offsets[old + 1])
        events = slice(patients.set_offsets[sets.start], patients.set_offsets[sets.stop])
        new_sets = slice(picked.patient_offsets[new], picked.patient_offsets[new + 1])
        new_events = slice(picked.set_offsets[new_sets.start], picked.set_offsets[new_sets.stop])
        assert np.array_equal(picked.variable_ids[new_events], patients.variable_ids[events])
        assert np.array_equal(picked.values[new_events], patients.values[events])
        assert np.array_equal(picked.set_times[new_sets], patients.set_times[sets])
        assert np.array_equal(picked.set_sizes()[new_sets], patients.set_sizes()[sets])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(shards dir, embedding file): 22 train and 10 valid tiny patients."""
    root = tmp_path_factory.mktemp("tiny")
    shards = root / "shards"
    common = {"mean_sets": 5, "mean_events": 12, "vocab_size": VOCAB, "max_set_size": 5}
    _write_split(shards, "train", random_patients(22, seed=1, **common))
    valid = random_patients(10, seed=2, **common)
    valid.labels[:] = np.arange(10) % 2  # both classes, so AUROC is defined
    _write_split(shards, "valid", valid)
    (shards / "index.json").write_text(json.dumps({"vocab_size": VOCAB}))
    embedding = root / "embedding.safetensors"
    save_file({"embedding": torch.randn(VOCAB, DIM, generator=torch.Generator().manual_seed(0))}, str(embedding))
    return shards, embedding


def _run(
    data, out: Path, batch_size: int = 4, extra: list[str] | None = None, model: dict | None = None, **train_overrides
) -> int:
    shards, embedding = data
    settings = {"model": {**TINY_MODEL, **(model or {})}, "train": {**TINY_TRAIN, **train_overrides}}
    argv = [
        "--settings",
        json.dumps(settings),
        "--shards",
        str(shards),
        "--embedding",
        str(embedding),
        "--batch-size",
        str(batch_size),
        "--out",
        str(out),
        "--threads",
        "1",
        *(extra or []),
    ]
    return train.main(argv)


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _no_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One uninterrupted run at batch size 4 (6 steps per epoch, 2 epochs)."""
    out = tmp_path_factory.mktemp("runs") / "bs4"
    assert _run(data, out) == 0
    return out


def test_outputs_and_their_contents(reference):
    out = reference
    for name in ("metrics.json", "metrics.jsonl", "best.safetensors", "final.safetensors", "run_config.json"):
        assert (out / name).is_file(), name
    lines = _lines(out)
    steps = [r for r in lines if r["kind"] == "step"]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    validations = [r for r in lines if r["kind"] == "validation"]
    noise = [r for r in lines if r["kind"] == "noise_scale"]
    assert len(steps) == 12 and [r["step"] for r in steps] == list(range(1, 13))  # ceil(22/4) x 2
    assert [r["epoch"] for r in epochs] == [1, 2] and [r["step"] for r in epochs] == [6, 12]
    assert all(set(r) == STEP_KEYS for r in steps) and all(set(r) == EPOCH_KEYS for r in epochs)
    assert all(set(r) == VALIDATION_KEYS for r in validations) and all(set(r) == NOISE_KEYS for r in noise)
    # every patient once per epoch; progress counts samples
    assert [sum(r["batch_patients"] for r in steps if r["epoch"] == e) for e in (1, 2)] == [22, 22]
    assert [r["samples"] for r in steps] == np.cumsum([r["batch_patients"] for r in steps]).tolist()
    assert steps[-1]["epochs"] == 2.0
    for r in steps:
        assert np.isfinite(r["loss"]) and r["loss"] > 0 and 0 < r["fill_ratio"] <= 1 and r["batch_patients"] <= 4
        expected = r["pred_weight"] * r["ce"] + r["recon_weight"] * r["recon"] + r["beta"] * r["kl"]
        assert r["loss"] == pytest.approx(expected, rel=1e-4)
    assert steps[0]["beta"] == 0.0 and steps[-1]["beta"] == pytest.approx(0.1)  # warm-up pinned to 4 steps
    # lr: 0.003 x sqrt(4 / 1) at its peak, cosine over the 2 epochs, at the progress each step completes
    train = {**load_settings({"train": TINY_TRAIN})["train"]}
    for r in steps:
        assert r["lr"] == pytest.approx(0.006 * lr_factor(train, r["step"], r["samples"] / 22))
    # validation twice per epoch: at the first step whose samples seen reach 11, 22, 33, 44
    first_reaching = [next(r for r in steps if r["samples"] >= 11 * k) for k in (1, 2, 3, 4)]
    assert [r["validation"] for r in validations] == [1, 2, 3, 4]
    assert [(r["step"], r["samples"]) for r in validations] == [(r["step"], r["samples"]) for r in first_reaching]
    assert [r["samples"] for r in validations][1::2] == [22, 44]  # epoch ends
    for r in validations:
        assert 0 <= r["val_auroc"] <= 1 and 0 < r["val_auprc"] <= 1 and r["val_loss"] > 0 and r["val_ce"] > 0
    # one noise-scale measurement per epoch, mid-epoch: before the step after the one reaching 11 (33) samples
    assert [(r["step"], r["b_small"], r["b_big"]) for r in noise] == [(first_reaching[k]["step"], 2, 4) for k in (0, 2)]

    summary = json.loads((out / "metrics.json").read_text())
    assert summary["batch_size"] == 4 and summary["seed"] == 3 and summary["steps"] == 12 and summary["epochs"] == 2
    assert summary["patients_seen"] == 44 and summary["device"] == "cpu" and summary["threads"] == 1
    assert summary["patients_per_s"] == pytest.approx(44 / summary["train_time_s"])
    assert summary["fill_ratio"] == 1.0 and 0.5 < summary["sequence_fill_ratio"] <= 1  # packed events
    assert summary["wall_time_s"] >= summary["train_time_s"] > 0
    assert summary["peak_rss_mb"] > 50 and summary["cuda_max_allocated_mb"] is None
    assert summary["largest_batch"]["patients"] == 4 and summary["validations"] == 4
    assert summary["largest_batch"]["events"] == max(r["batch_events"] for r in steps)
    best = max(validations, key=lambda r: (r["val_auroc"], -r["val_loss"]))  # ties: lower loss
    assert summary["best"]["validation"] == best["validation"] and summary["best_val_auroc"] == best["val_auroc"]
    assert summary["noise_scale"]["measurements"] == 2 and summary["lr"] == pytest.approx(0.006)

    config = json.loads((out / "run_config.json").read_text())
    assert config["batch_size"] == 4 and config["vocab_size"] == VOCAB and config["embedding_dim"] == DIM
    assert config["model"]["latent_dim"] == 16 and config["train"]["epochs"] == 2 and config["seed"] == 3

    # weights rebuild the model strictly; best differs from final only if an earlier point was best
    from seqsetvae.model import ModelConfig, SeqSetVAE

    model = SeqSetVAE(ModelConfig.from_settings(config["model"]), torch.zeros(VOCAB, DIM))
    final, best_weights = load_file(str(out / "final.safetensors")), load_file(str(out / "best.safetensors"))
    model.load_state_dict(final, strict=True)
    same = all(torch.equal(final[k], best_weights[k]) for k in final)
    assert same == (summary["best"]["validation"] == 4)
    assert (out / "checkpoints" / "latest.json").is_file()
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == ["step-00000012"]  # only the final one


def test_noise_scale_measurement_leaves_training_unchanged(data, reference, tmp_path):
    """The measurement runs outside the training RNG stream: without it, the same weights."""
    assert _run(data, tmp_path / "quiet", noise_scale={"per_epoch": 0, "patients": 4}) == 0
    a, b = load_file(str(reference / "final.safetensors")), load_file(str(tmp_path / "quiet" / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [r for r in _lines(tmp_path / "quiet") if r["kind"] == "noise_scale"]


def test_same_seed_same_metrics(data, reference, tmp_path):
    assert _run(data, tmp_path / "again") == 0
    assert _no_timing(_lines(tmp_path / "again")) == _no_timing(_lines(reference))
    a, b = load_file(str(reference / "final.safetensors")), load_file(str(tmp_path / "again" / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rule", ["lowest_cross_entropy", "last"])
def test_the_kept_weights_are_the_validation_point_the_rule_names(data, reference, tmp_path, rule):
    """train.keep_weights chooses which point best.safetensors holds; training is the same."""
    from seqsetvae.evaluation.evaluate import load_model
    from seqsetvae.model import LossWeights
    from seqsetvae.runtime.dataset import ShardBatches
    from seqsetvae.training.validation import validate

    out = tmp_path / rule
    assert _run(data, out, keep_weights=rule) == 0
    a, b = load_file(str(reference / "final.safetensors")), load_file(str(out / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    validations = [r for r in _lines(out) if r["kind"] == "validation"]
    kept = min(validations, key=lambda r: (r["val_ce"], -r["val_auroc"])) if rule != "last" else validations[-1]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["keep_weights"] == rule and summary["best"]["validation"] == kept["validation"]
    assert summary["best"]["val_ce"] == kept["val_ce"] and summary["best_val_auroc"] == kept["val_auroc"]
    # the kept weights score the validation split as that point did
    run_config = json.loads((out / "run_config.json").read_text())
    shards, embedding = data
    model = load_model(
        run_config, load_file(str(embedding))["embedding"], out / "best.safetensors", torch.device("cpu")
    )
    settings = load_settings({"model": run_config["model"], "train": run_config["train"]})
    again = validate(
        model,
        ShardBatches(str(shards), "valid"),
        16,
        settings["train"],
        torch.device("cpu"),
        contextlib.nullcontext,
        LossWeights.at_evaluation(settings["model"]),
    )
    assert again["val_ce"] == pytest.approx(kept["val_ce"], rel=1e-5)
    assert again["val_auroc"] == pytest.approx(kept["val_auroc"])
    if rule == "last":
        best = load_file(str(out / "best.safetensors"))
        assert all(torch.equal(best[k], b[k]) for k in b)


def _assert_same_run(out: Path, reference: Path) -> None:
    a, b = load_file(str(reference / "final.safetensors")), load_file(str(out / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = load_file(str(reference / "best.safetensors")), load_file(str(out / "best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _no_timing(_lines(out)) == _no_timing(_lines(reference))


def test_stop_and_resume_gives_the_same_weights(data, reference, tmp_path):
    out = tmp_path / "bs4"
    # stop mid-epoch 2 (step 8: checkpoints at 3, 6, 8)
    assert _run(data, out, extra=["--stop-after-steps", "8"]) == 0
    assert not (out / "final.safetensors").exists() and not (out / "metrics.json").exists()
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 8
    # a kill after the checkpoint leaves log lines the resumed run must not repeat
    with open(out / "checkpoints" / "metrics.jsonl", "a") as log:
        log.write('{"kind": "step", "step": 9, "loss": 123.0}\n')
    assert _run(data, out) == 0
    _assert_same_run(out, reference)


def test_class_balanced_sampling_trains_on_its_draws_and_resumes_to_the_same_weights(data, reference, tmp_path):
    """train.class_sampling: balanced changes which patients the steps see (not the
    natural run's weights), and a stopped run resumes to the uninterrupted one's."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert _run(data, whole, class_sampling="balanced") == 0
    natural = load_file(str(reference / "final.safetensors"))
    balanced = load_file(str(whole / "final.safetensors"))
    assert any(not torch.equal(natural[k], balanced[k]) for k in natural)
    assert _run(data, stopped, class_sampling="balanced", extra=["--stop-after-steps", "8"]) == 0
    assert _run(data, stopped, class_sampling="balanced") == 0
    _assert_same_run(stopped, whole)


def test_a_run_from_the_regressions_start_says_so_and_resumes_to_the_same_weights(data, tmp_path, capsys):
    wide = {
        "model": {"wide": "summaries", "wide_l2": 3.0},
        "wide_start": "regression",
        "wide_start_c_grid": [0.01, 1.0],
    }
    assert _run(data, tmp_path / "whole", **wide) == 0
    assert "the wide path starts at the logistic regression (C " in capsys.readouterr().out
    assert _run(data, tmp_path / "resumed", extra=["--stop-after-steps", "8"], **wide) == 0
    assert _run(data, tmp_path / "resumed", **wide) == 0
    _assert_same_run(tmp_path / "resumed", tmp_path / "whole")
    start = load_file(str(tmp_path / "whole" / "final.safetensors"))
    assert start["classifier.wide.1.weight"].abs().sum() > 0


def test_a_frozen_regression_start_ends_as_it_started(data, tmp_path):
    """`wide_start: regression` with `wide_lr_factor: 0`: the run's kept and final weights
    hold the fitted regression unchanged (map and standardiser), while the network trains."""
    from seqsetvae.training.wide_start import fit_wide_start

    frozen = {"model": {"wide": "summaries"}, "wide_start": "regression", "wide_start_c_grid": [0.01, 1.0]}
    assert _run(data, tmp_path / "run", wide_lr_factor=0.0, **frozen) == 0
    start = fit_wide_start(Path(data[0]), [0.01, 1.0], max_iter=2000)
    for name in ("best", "final"):
        weights = load_file(str(tmp_path / "run" / f"{name}.safetensors"))
        weight, mean = weights["classifier.wide.1.weight"].double(), weights["classifier.summary_moments"].double()
        coef = torch.as_tensor(start.coef, dtype=torch.float64)
        torch.testing.assert_close(weight[1] - weight[0], coef[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mean[: coef.shape[1]], torch.as_tensor(start.mean), rtol=1e-5, atol=1e-6)
        assert weights["classifier.mlp.1.weight"].abs().sum() > 0  # the deep head trained


@pytest.mark.parametrize("combine", ["standardized", "stacked"])
def test_a_stacked_run_keeps_the_stack_fitted_to_its_kept_weights_on_the_validation_split(data, tmp_path, combine):
    """`model.wide_combine: standardized | stacked`: every validation point fits the stack on the
    validation split and scores the refitted model; the kept weights hold that stack, so
    evaluation predicts what validation scored."""
    from sklearn.metrics import roc_auc_score

    from seqsetvae.evaluation.evaluate import load_model
    from seqsetvae.model import LossWeights
    from seqsetvae.runtime.dataset import ShardBatches
    from seqsetvae.runtime.device import load_embedding

    stacked = {"model": {"wide": "summaries", "wide_combine": combine}, "wide_start": "regression"}
    trained = {"wide_start_c_grid": [0.01, 1.0], "keep_weights": "last"}  # the paths move: so does the stack
    assert _run(data, tmp_path / "run", **trained, **stacked) == 0
    points = [line for line in _lines(tmp_path / "run") if line["kind"] == "validation"]
    assert len({tuple(line["stack_weights"]) for line in points}) == len(points) > 1  # refitted at each point
    assert all(0 <= line["val_auroc_network"] <= 1 for line in points)
    shards, embedding = data
    run_config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    kept = load_model(run_config, load_embedding(embedding), tmp_path / "run" / "best.safetensors", torch.device("cpu"))
    valid = ShardBatches(str(shards), "valid")
    with torch.no_grad():
        out = kept(
            valid(np.arange(len(valid))),
            LossWeights.at_evaluation(load_settings({"model": run_config["model"]})["model"]),
        )
    assert kept.classifier.stack_weights.tolist() == pytest.approx(points[-1]["stack_weights"], abs=1e-6)
    assert roc_auc_score(valid.labels, torch.softmax(out.logits, -1)[:, 1]) == pytest.approx(points[-1]["val_auroc"])
    saved = [t.clone() for t in (kept.classifier.stack_weights, kept.classifier.stack_bias)]
    assert kept.classifier.fit_stack(out.paths, torch.from_numpy(valid.labels))  # its own maximum: a refit stays
    torch.testing.assert_close(kept.classifier.stack_weights, saved[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kept.classifier.stack_bias, saved[1], rtol=1e-4, atol=1e-5)
    # evaluation of the kept weights on the same split: the model's and the network's AUROC as validation scored them
    from seqsetvae.evaluation import evaluate

    argv = [
        "--shards",
        str(shards),
        "--embedding",
        str(embedding),
        "--weights",
        str(tmp_path / "run" / "best.safetensors"),
    ]
    argv += ["--run-config", str(tmp_path / "run" / "run_config.json"), "--batch-size", "4", "--split", "valid"]
    argv += ["--out", str(tmp_path / "eval.json"), "--predictions", str(tmp_path / "eval.parquet"), "--threads", "1"]
    assert evaluate.main(argv) == 0
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert scored["auroc"] == pytest.approx(points[-1]["val_auroc"])
    assert scored["network"]["auroc"] == pytest.approx(points[-1]["val_auroc_network"])
    assert scored["network"]["stack_weights"] == pytest.approx(points[-1]["stack_weights"], abs=1e-6)


def test_the_regressions_start_without_the_wide_path_is_an_input_error(data, tmp_path):
    with pytest.raises(InputError, match="train.wide_start: regression needs model.wide: summaries"):
        _run(data, tmp_path / "run", wide_start="regression")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_killed_job_resumes_to_the_same_weights(data, reference, tmp_path):
    """SIGKILL a real `seqsetvae train` process once it has checkpointed, then rerun it."""
    shards, embedding = data
    out = tmp_path / "bs4"
    settings = {"model": TINY_MODEL, "train": {**TINY_TRAIN, "checkpoint_every": 1}}
    command = [
        sys.executable,
        "-m",
        "seqsetvae.cli",
        "train",
        "--settings",
        json.dumps(settings),
        "--shards",
        str(shards),
        "--embedding",
        str(embedding),
        "--batch-size",
        "4",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300  # generous: a loaded CI machine imports torch slowly
    while time.monotonic() < deadline and process.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 4:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert 4 <= killed_at < 12, killed_at
    assert not (out / "final.safetensors").exists()
    assert _run(data, out, checkpoint_every=1) == 0
    _assert_same_run(out, reference)


def test_completed_run_restarted_keeps_its_results(data, tmp_path, capsys):
    out = tmp_path / "bs4"
    assert _run(data, out, epochs=1) == 0
    before = (out / "metrics.jsonl").read_text(), (out / "final.safetensors").read_bytes()
    (out / "final.safetensors").unlink()  # as Snakemake does before rerunning a job
    capsys.readouterr()
    assert _run(data, out, epochs=1) == 0
    assert "resuming" in capsys.readouterr().err
    assert ((out / "metrics.jsonl").read_text(), (out / "final.safetensors").read_bytes()) == before


def test_changed_configuration_is_moved_aside_not_resumed(data, tmp_path, capsys):
    out = tmp_path / "bs4"
    assert _run(data, out, epochs=1) == 0
    old_latest = (out / "checkpoints" / "latest.json").read_text()
    capsys.readouterr()
    assert _run(data, out, epochs=1, lr=0.001) == 0
    err = capsys.readouterr().err
    assert "written under another model, data, optimiser, batch size, seed or device: moved to" in err
    assert "resuming" not in err
    steps = [r for r in _lines(out) if r["kind"] == "step"]
    assert steps[0]["lr"] < 0.003 and len(steps) == 6 and steps[0]["step"] == 1  # started again at step 1
    (aside,) = (out / "superseded").iterdir()  # the old run is kept, not deleted
    assert (aside / "latest.json").read_text() == old_latest


def test_a_budget_change_continues_from_the_last_checkpoint(data, tmp_path, capsys):
    """Raising train.epochs continues the finished run (same first epoch, the steps go on
    from 7); lowering it below the progress made moves the run aside."""
    out = tmp_path / "bs4"
    assert _run(data, out, epochs=1) == 0
    first = _no_timing(_lines(out))
    capsys.readouterr()
    assert _run(data, out, epochs=2) == 0
    assert "train.epochs changed from 1 to 2: continuing at 1.00 epochs" in capsys.readouterr().err
    lines = _no_timing(_lines(out))
    assert lines[: len(first)] == first
    steps = [r["step"] for r in lines if r["kind"] == "step"]
    assert steps == list(range(1, 13))
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["budget_changes"] == [{"step": 6, "epochs_from": 1, "epochs_to": 2}] and summary["steps"] == 12

    capsys.readouterr()
    assert _run(data, out, epochs=1) == 0
    assert "are past the new budget's end: moved to" in capsys.readouterr().err
    assert [r["step"] for r in _lines(out) if r["kind"] == "step"] == list(range(1, 7))


def test_memory_peaks_are_the_maximum_over_every_segment(data, tmp_path):
    out = tmp_path / "bs4"
    assert _run(data, out, extra=["--stop-after-steps", "8"]) == 0
    latest = out / "checkpoints" / json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    state = json.loads((latest / "state.json").read_text())
    assert state["run"]["peaks"]["peak_rss_mb"] > 0
    state["run"]["peaks"]["peak_rss_mb"] = 123456.0  # as if the first process had peaked there
    (latest / "state.json").write_text(json.dumps(state))
    assert _run(data, out) == 0
    assert json.loads((out / "metrics.json").read_text())["peak_rss_mb"] == 123456.0


def test_a_non_finite_batch_is_skipped_before_the_step_then_fails_past_the_limit(data, tmp_path, monkeypatch, capsys):
    from seqsetvae.model import SeqSetVAE

    original, calls = SeqSetVAE.forward, {"n": 0}

    def forward(self, batch, weights):
        output = original(self, batch, weights)
        if self.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:  # the third training batch
                output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(SeqSetVAE, "forward", forward)
    out = tmp_path / "bs4"
    assert _run(data, out, noise_scale={"per_epoch": 0, "patients": 4}) == 0
    lines = _lines(out)
    (skipped,) = [r for r in lines if r["kind"] == "skipped"]
    assert skipped["step"] == 2 and skipped["non_finite"] == ["grad_norm", "loss"] and len(skipped["patients"]) == 4
    assert f"patients {', '.join(skipped['patients'])}" in capsys.readouterr().err
    assert len([r for r in lines if r["kind"] == "step"]) == 11  # 12 batches, one skipped
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["skipped_batches"] == 1 and summary["patients_seen"] == 44  # the schedules' clock went on
    weights = load_file(str(out / "final.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())

    calls["n"] = 0
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite grad_norm, loss \(epoch 1, after step 2, patients .*"
        r"1 batches skipped, more than train.max_skipped_batches = 0",
    ):
        _run(data, tmp_path / "strict", noise_scale={"per_epoch": 0, "patients": 4}, max_skipped_batches=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_a_job_given_gpus_without_one_fails_at_once(data, tmp_path, capsys):
    with pytest.raises(InputError, match=r"train.device: this job was given 1 GPU\(s\).*no CUDA device is visible"):
        _run(data, tmp_path / "gpu", extra=["--gpus", "1"], device="auto")
    with pytest.raises(InputError, match=r"train.device is cuda but no CUDA device is visible"):
        _run(data, tmp_path / "cuda", device="cuda")
    assert not (tmp_path / "gpu").exists() and not (tmp_path / "cuda").exists()
    assert _run(data, tmp_path / "fallback", extra=["--gpus", "1"], device="auto", epochs=1, cpu_fallback=True) == 0
    assert "although the job was given 1 GPU(s) (train.cpu_fallback), training on the CPU" in capsys.readouterr().err
    assert _run(data, tmp_path / "auto", device="auto", epochs=1) == 0
    assert "train.device auto: no CUDA device visible, training on the CPU" in capsys.readouterr().err
    summary = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert summary["device"] == "cpu" and summary["device_requested"] == "auto"
    assert summary["machine"]["host"] and summary["machine"]["cpu"] and summary["machine"]["gpu"] is None


def test_batch_size_one_and_token_budget(data, tmp_path):
    assert _run(data, tmp_path / "bs1", batch_size=1, epochs=1) == 0
    steps = [r for r in _lines(tmp_path / "bs1") if r["kind"] == "step"]
    assert len(steps) == 22 and all(r["batch_patients"] == 1 for r in steps)

    assert _run(data, tmp_path / "budget", batch_size=8, epochs=1, max_events_per_batch=40) == 0
    steps = [r for r in _lines(tmp_path / "budget") if r["kind"] == "step"]
    assert sum(r["batch_patients"] for r in steps) == 22
    assert all(r["batch_events"] <= 40 or r["batch_patients"] == 1 for r in steps)


def test_embedding_that_does_not_match_the_vocabulary(data, tmp_path):
    shards, _ = data
    bad = tmp_path / "embedding.safetensors"
    save_file({"embedding": torch.zeros(VOCAB + 1, DIM)}, str(bad))
    with pytest.raises(InputError, match=r"embedding\.safetensors.*13 rows.*vocabulary of 12"):
        _run((shards, bad), tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_threads():
    available = len(os.sched_getaffinity(0))
    assert resolve_threads(None, 1) == 1
    assert resolve_threads(1000, 1) == available  # capped at the CPUs this process may use
    assert resolve_threads(None, None) == available


def test_loader_workers_give_the_same_run(data, reference, tmp_path):
    """Batches built ahead by 2 DataLoader workers: the same steps, weights and log (the
    sampler stays the one source of batch order), and the wait for data is recorded."""
    out = tmp_path / "bs4"
    assert _run(data, out, loader_workers=2) == 0
    _assert_same_run(out, reference)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["loader_workers"] == 2 and 0 <= summary["data_wait_fraction"] < 1
    built_here = json.loads((reference / "metrics.json").read_text())
    assert built_here["loader_workers"] == 0 and 0 < built_here["data_wait_fraction"] < 1


def test_a_compiled_step_trains_from_two_graphs(data, reference, tmp_path, monkeypatch):
    """train.compile on the CPU (with the quick aot_eager backend here; inductor's
    numbers are tests/test_compile.py's): the run completes, its losses follow the eager
    run's, and the whole run, 12 steps of 4 batch shapes and 4 validations, used one
    training and one evaluation graph."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="aot_eager", dynamic=True))
    out = tmp_path / "bs4"
    assert _run(data, out, compile=True) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["compile"] == "default" and summary["compiled_graphs"] == 2
    assert [r["compiled_graphs"] for r in _lines(out) if r["kind"] == "epoch"] == [2, 2]
    eager = [r["loss"] for r in _lines(reference) if r["kind"] == "step"]
    compiled = [r["loss"] for r in _lines(out) if r["kind"] == "step"]
    assert np.all(np.isfinite(compiled)) and compiled[0] == pytest.approx(eager[0], rel=1e-4)
    assert json.loads((reference / "metrics.json").read_text())["compile"] is None


def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_resumed(data, reference, tmp_path, capsys):
    out = tmp_path / "bs4"
    assert _run(data, out, extra=["--stop-after-steps", "8"]) == 0  # checkpoints kept: steps 6 and 8
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert kept == ["step-00000006", "step-00000008"]
    weights = out / "checkpoints" / "step-00000008" / "model.safetensors"
    half = weights.read_bytes()[: weights.stat().st_size // 2]
    weights.write_bytes(half)  # an interrupted copy
    capsys.readouterr()
    assert _run(data, out) == 0
    err = capsys.readouterr().err
    aside = out / "damaged_checkpoints" / "step-00000008"
    assert f"checkpoint damaged ({out / 'checkpoints' / 'step-00000008'}: " in err
    assert f"moved to {aside}; resuming from {out / 'checkpoints' / 'step-00000006'} instead" in err
    assert (aside / "model.safetensors").read_bytes() == half  # kept as it was, not deleted
    _assert_same_run(out, reference)  # resumed from step 6: the uninterrupted run's weights and log


def test_no_complete_checkpoint_left_trains_from_step_zero(data, reference, tmp_path, capsys):
    out = tmp_path / "bs4"
    assert _run(data, out, extra=["--stop-after-steps", "8"]) == 0
    for state in (out / "checkpoints").glob("step-*/state.safetensors"):
        state.write_bytes(b"")  # zero bytes
    (out / "checkpoints" / "step-00000006" / "state.json").write_bytes(np.random.default_rng(0).bytes(64))
    capsys.readouterr()
    assert _run(data, out) == 0
    err = capsys.readouterr().err
    assert err.count("checkpoint damaged") == 2 and "training starts from step 0" in err
    assert sorted(p.name for p in (out / "damaged_checkpoints").iterdir()) == ["step-00000006", "step-00000008"]
    _assert_same_run(out, reference)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_checkpoints_the_step_in_flight_and_the_rerun_redoes_nothing(
    data, reference, tmp_path, monkeypatch, capsys, name
):
    """The signal (sent to this very process, as a cluster sends it) arrives during step 5;
    the run checkpoints step 5 at once (periodic checkpoints only at 3 and the epoch end),
    exits with 128 + the signal, and its rerun ends with the reference run's weights."""
    out = tmp_path / "bs4"
    step = train.Trainer.step

    def step_then_signal(self, *args, **kwargs):
        line = step(self, *args, **kwargs)
        if self.state.step == 5 and not (out / "checkpoints" / "step-00000005").exists():
            os.kill(os.getpid(), getattr(signal, name))
        return line

    monkeypatch.setattr(train.Trainer, "step", step_then_signal)
    handler_before = signal.getsignal(getattr(signal, name))
    assert _run(data, out) == 128 + getattr(signal, name)
    assert signal.getsignal(getattr(signal, name)) is handler_before  # put back
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 5
    assert not (out / "final.safetensors").exists() and not (out / "metrics.json").exists()
    error = capsys.readouterr().err
    assert (
        f"error: stopped by {name} after step 5: checkpoint written to {out / 'checkpoints' / 'step-00000005'}" in error
    )
    monkeypatch.setattr(train.Trainer, "step", step)
    steps_run = []
    monkeypatch.setattr(train.Trainer, "step", lambda self, *a, **k: steps_run.append(1) or step(self, *a, **k))
    assert _run(data, out) == 0
    assert len(steps_run) == 12 - 5  # no step trained twice
    _assert_same_run(out, reference)


def _tracked_from_jsonl(out: Path) -> dict[str, dict[int, float]]:
    from seqsetvae.training.tracking import scalars

    tracked: dict[str, dict[int, float]] = {}
    for record in _lines(out):
        for name, value in scalars(record).items():
            tracked.setdefault(name, {})[record["step"]] = value
    return tracked


def test_tensorboard_tracking_holds_the_metrics_jsonl_values_once_each_after_a_resume(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "bs4"
    assert _run(data, out, tracking="tensorboard", extra=["--stop-after-steps", "8"]) == 0
    assert _run(data, out, tracking="tensorboard") == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    expected = _tracked_from_jsonl(out)
    assert set(events.Tags()["scalars"]) == set(expected) and "validation/val_auroc" in expected
    for name, by_step in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(name)]
        assert [step for step, _ in got] == sorted(by_step), name  # every step once, in order
        assert [value for _, value in got] == pytest.approx([by_step[s] for s in sorted(by_step)], rel=1e-6), name


def test_mlflow_tracking_holds_the_metrics_jsonl_values(data, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out = tmp_path / "bs4"
    assert _run(data, out, epochs=1, tracking="mlflow") == 0
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("seqsetvae").experiment_id])
    assert run.info.run_name == "bs4/lr1/seed3" and run.data.params["batch_size"] == "4"
    for name, by_step in _tracked_from_jsonl(out).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert history == [(step, pytest.approx(by_step[step], rel=1e-12)) for step in sorted(by_step)], name
