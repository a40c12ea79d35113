"""The network's linear head refitted at the end of training (`train.head_refit: regression`).

Trained by a few epochs of small noisy steps while the features under it move, the
linear head (`model.head: linear`) can stop short of what those features hold: on
5,000 PhysioNet 2019 stays, an L2 logistic regression on the kept network's readout
features ranked the validation stays 0.03 higher than its own head
(docs/learning_on_real_data.md, round sixteen). So, once the run has kept its weights,
the head is replaced by that regression, fitted on the train split's features with its
C chosen on the validation split's network AUROC (the head it replaces stays when no C
scores higher), and the model's stack is refitted on validation as at every validation
point. One pass over the train and validation splits in evaluation mode; rank 0 only.
The refit reads the kept checkpoint and writes beside it (`head_refit.safetensors`),
so a run restarted before its outputs were written refits to the same weights.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from seqsetvae.errors import InputError
from seqsetvae.model import LossWeights
from seqsetvae.runtime.weights import load_weights, save_weights
from seqsetvae.training.validation import VALIDATION_BATCH_SIZE, length_ordered, validate

if TYPE_CHECKING:
    from seqsetvae.training.train import Trainer


@torch.no_grad()
def readout_features(model, batches, batch_size: int, train: dict, device, autocast) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F] float64: what the linear head reads, centred; labels [N]) in the
    split's own patient order."""
    sampler = length_ordered(batches, batch_size, train)
    head = model.classifier.mlp[-1]
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].float().cpu()))
    weights = LossWeights(beta=0.0, recon=0.0, pred=1.0)
    features = np.zeros((len(batches), head.in_features))
    was_training = model.training
    model.eval()
    try:
        for indices in sampler.batches(0):
            captured.clear()
            with autocast():
                model(batches(indices).to(device), weights)
            features[indices] = captured[-1][: len(indices)].double().numpy()
    finally:
        hook.remove()
        model.train(was_training)
    return features, batches.labels


def fit_head(
    train_set: tuple[np.ndarray, np.ndarray],
    valid_set: tuple[np.ndarray, np.ndarray],
    current_auroc: float,
    c_grid: list[float],
    class_weight: dict[int, float] | None,
) -> dict | None:
    """The binary regression with the best validation AUROC over `c_grid` (the first on
    ties), as the head's weight [2, F] and bias [2]: None when none beats the current
    head's validation AUROC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    (x_train, y_train), (x_valid, y_valid) = train_set, valid_set
    scaler = StandardScaler().fit(x_train)
    best = {"val_auroc": current_auroc, "c": None}
    for c in c_grid:
        regression = LogisticRegression(C=c, max_iter=2000, class_weight=class_weight)
        regression.fit(scaler.transform(x_train), y_train)
        auroc = roc_auc_score(y_valid, regression.decision_function(scaler.transform(x_valid)))
        if auroc > best["val_auroc"]:
            best = {"val_auroc": auroc, "c": c, "regression": regression}
    if best["c"] is None:
        return None
    # logit(x) = coef . (x - mean) / scale + intercept, split symmetrically over the two classes
    coef = best["regression"].coef_[0] / scaler.scale_
    bias = best["regression"].intercept_[0] - coef @ scaler.mean_
    return {
        "c": best["c"],
        "val_auroc_network": float(best["val_auroc"]),
        "weight": np.stack([-coef / 2, coef / 2]),
        "bias": np.array([-bias / 2, bias / 2]),
    }


def refit_head(trainer: Trainer) -> Path | None:
    """Refit the kept weights' linear head (module docstring); returns the refitted
    weights' file, or None when the run's own head scored best on validation. Records
    the choice in metrics.jsonl and the refitted scores in the kept point (which the
    learning-rate grid compares)."""
    from safetensors import safe_open
    from sklearn.metrics import roc_auc_score

    train, state = trainer.train, trainer.state
    if trainer.settings["model"]["head"] != "linear" or trainer.model.config.num_classes != 2:
        raise InputError("configuration key train.head_refit: regression needs model.head: linear and two classes")
    if len(trainer.valid_batches) == 0:
        raise InputError("configuration key train.head_refit: regression needs a validation split to choose C")
    kept = trainer.checkpoints / "best.safetensors"
    model = copy.deepcopy(trainer.evaluated)  # the final weights stay as they are for final.safetensors
    load_weights(model, kept)
    batch_size = max(trainer.args.batch_size, VALIDATION_BATCH_SIZE)
    scored = [
        readout_features(model, batches, batch_size, train, trainer.device, trainer.autocast)
        for batches in (trainer.train_batches, trainer.valid_batches)
    ]
    head = model.classifier.mlp[-1]
    weight, bias = head.weight.detach().double().cpu().numpy(), head.bias.detach().double().cpu().numpy()
    current = scored[1][0] @ (weight[1] - weight[0]) + (bias[1] - bias[0])
    before = {k: state.best.get(k) for k in ("val_auroc", "val_loss", "val_ce")}
    before["val_auroc_network"] = float(roc_auc_score(scored[1][1], current))
    class_weight = dict(enumerate(model.class_weights.tolist()))
    fitted = fit_head(*scored, before["val_auroc_network"], train["wide_start_c_grid"], class_weight)
    line = {"kind": "head_refit", "step": state.step, "c": None if fitted is None else fitted["c"], "before": before}
    if fitted is None:
        append_line(trainer.log_path, line)
        trainer.recorder.note("head refit: no C scored higher on validation than the run's own head; kept it")
        return None
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fitted["weight"]).to(head.weight))
        head.bias.copy_(torch.from_numpy(fitted["bias"]).to(head.bias))
    result = validate(
        model,
        trainer.valid_batches,
        batch_size,
        train,
        trainer.device,
        trainer.autocast,
        LossWeights.at_evaluation(trainer.settings["model"]),
    )
    line |= result
    state.best.update({k: result[k] for k in ("val_loss", "val_ce", "val_auroc")})
    with safe_open(str(kept), framework="pt") as f:
        metadata = json.loads(f.metadata()["training"])
    metadata.pop("sha256", None)
    refitted = trainer.checkpoints / "head_refit.safetensors"
    save_weights(model, refitted, {**metadata, "head_refit_c": fitted["c"]})
    append_line(trainer.log_path, line)
    trainer.recorder.note(f"head refit: C {fitted['c']}, validation AUROC {result['val_auroc']}")
    return refitted


def append_line(log_path: Path, line: dict) -> None:
    """One record after training's own log is closed (a rerun truncates the log back to
    its last checkpoint, so the refit is never logged twice)."""
    with open(log_path, "a") as log:
        log.write(json.dumps(line, allow_nan=False) + "\n")
