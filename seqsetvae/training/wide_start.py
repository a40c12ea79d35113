"""`train.wide_start: regression`: the wide path starts where the logistic regression ends.

With `model.wide: summaries` the classifier's logits are the deep head's plus a linear map
of the patient's standardised summaries, the logistic-regression baseline's own features.
From zero, that map needs most of the budget to reach what the regression reaches in a
second, and at small batch sizes the deep path overfits before it gets there
(docs/learning_rounds.md, round eight). This fits the baseline's regression on the
train split (C chosen on the validation split, as the `baseline` rule does; no test data)
and copies it into the model: the scaler's moments into the running moments, the
coefficients into the wide Linear, and (with `model.wide_combine: sum`) the deep head's
last Linear to zero, so that the untrained model's scores are the regression's and
training learns what the network adds. With `average` the deep head keeps its initial
weights: it is fitted on its own, and the model's logits are the mean of the two paths'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqsetvae.errors import InputError
from seqsetvae.summaries import patient_summaries


@dataclass(frozen=True)
class WideStart:
    mean: np.ndarray  # [F] the standardiser's mean
    variance: np.ndarray  # [F] its (population) variance
    coef: np.ndarray  # [1 or K, F] on standardised features
    intercept: np.ndarray  # [1 or K]
    c: float
    val_auroc: float | None
    at_grid_edge: bool


def fit_wide_start(shards: Path, c_grid: list[float], max_iter: int) -> WideStart:
    """The baseline rule's logistic regression (seqsetvae.evaluation.baseline: standardised
    summaries, C with the best validation AUROC, the first on ties) fitted on `shards`'
    train split; the features are the wide path's own (seqsetvae.summaries)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from seqsetvae.runtime.dataset import ShardBatches

    data = {}
    for split in ("train", "valid"):
        batches = ShardBatches(str(shards), split)
        summaries = patient_summaries(batches(np.arange(len(batches))), batches.reader.vocab_size, torch.float64)
        data[split] = (summaries.numpy(), batches.labels.astype(np.int64))
    (x_train, y_train), (x_valid, y_valid) = data["train"], data["valid"]
    if len(np.unique(y_train)) < 2:
        raise InputError(f"{shards}/train: train.wide_start: regression needs both classes in the train split")
    scaler = StandardScaler().fit(x_train)
    x_train, x_valid = scaler.transform(x_train), scaler.transform(x_valid)
    two_classes = len(np.unique(y_valid)) == 2
    best = None
    for c in c_grid:
        regression = LogisticRegression(C=c, max_iter=max_iter).fit(x_train, y_train)
        auroc = float(roc_auc_score(y_valid, regression.predict_proba(x_valid)[:, 1])) if two_classes else None
        if best is None or (auroc is not None and auroc > best[2]):
            best = (c, regression, auroc)
    c, regression, auroc = best
    return WideStart(
        mean=scaler.mean_,
        variance=scaler.var_,
        coef=regression.coef_,
        intercept=regression.intercept_,
        c=float(c),
        val_auroc=auroc,
        at_grid_edge=len(c_grid) > 1 and c in (min(c_grid), max(c_grid)),
    )


@torch.no_grad()
def apply_wide_start(model: torch.nn.Module, start: WideStart, n_train: int, class_odds) -> None:
    """Copy `start` into `model.classifier` (a SeqSetVAE built with `model.wide: summaries`).

    The model's softmax logits l_k, trained with class weights w_k on patients drawn at
    shares s_k of classes whose natural rates are p_k, have their optimum at
    log p(k | x) + log(w_k s_k / p_k): those logarithms (`class_odds`, from
    seqsetvae.training.optimizer.training_class_odds; None: all 1) join the biases. A binary
    regression's logit is split symmetrically over the two classes.
    """
    classifier = model.classifier
    if classifier.wide is None:
        raise InputError("configuration key train.wide_start: regression needs model.wide: summaries")
    linear = classifier.wide[1]
    classes, features = linear.weight.shape
    if start.coef.shape[-1] != features:
        raise InputError(
            f"train.wide_start: the regression has {start.coef.shape[-1]} features, the wide path {features}"
        )
    coef = torch.as_tensor(start.coef, dtype=torch.float64)
    intercept = torch.as_tensor(start.intercept, dtype=torch.float64)
    if coef.shape[0] == 1:  # binary: logit = l_1 - l_0
        if classes != 2:
            raise InputError(f"train.wide_start: a binary regression for a model with {classes} classes")
        coef = torch.cat([-coef / 2, coef / 2])
        intercept = torch.cat([-intercept / 2, intercept / 2])
    if class_odds is not None:
        intercept = intercept + torch.tensor([math.log(w) for w in class_odds], dtype=torch.float64)
    linear.weight.copy_(coef.to(linear.weight.dtype))
    linear.bias.copy_(intercept.to(linear.bias.dtype))
    mean = torch.as_tensor(start.mean, dtype=torch.float64)
    mean_square = torch.as_tensor(start.variance, dtype=torch.float64) + mean.square()
    classifier.summary_moments.copy_(torch.cat([mean, mean_square]).to(classifier.summary_moments.dtype))
    classifier.summary_patients_seen.fill_(float(n_train))
    if classifier.combine == "sum":  # the sum's deep head starts at zero: the scores start as the regression's
        head = classifier.mlp[-1]
        head.weight.zero_()
        head.bias.zero_()
