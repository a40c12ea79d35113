"""AdamW over the model's parameter groups, the learning rate per step, class weights."""

from __future__ import annotations

import numpy as np
import torch

from seqsetvae.errors import InputError
from seqsetvae.runtime.sampler import class_shares


def build_optimizer(model, train: dict, lr: float) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (SetVAE encoder at lr x setvae_lr_factor).

    Each group keeps its peak rate as `initial_lr`; `set_learning_rate` scales it.
    """
    groups = model.parameter_groups(
        lr=lr, setvae_lr_factor=train["setvae_lr_factor"], wide_lr_factor=train["wide_lr_factor"]
    )
    for group in groups:
        group["initial_lr"] = group["lr"]
    # fused on CUDA: one kernel instead of ~10 per parameter tensor (the step was a third
    # of a batch-16 step's GPU time on an H200); CPU keeps the default implementation
    fused = True if next(model.parameters()).is_cuda else None
    return torch.optim.AdamW(groups, lr=lr, weight_decay=train["weight_decay"], betas=(0.9, 0.999), fused=fused)


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Every group at its peak rate x `factor`; returns the main rate (the `rest` group's)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return next(group["lr"] for group in optimizer.param_groups if group.get("name") == "rest")


def class_weights(labels: np.ndarray, rule: str, class_sampling: str = "natural") -> tuple[float, float] | None:
    """Cross-entropy weights of classes (0, 1). `balanced`: each class half of the
    expected cross-entropy under the sampler's class shares (train.class_sampling): the
    positives weigh n_neg / n_pos when patients are drawn at their natural rate, 1 when
    drawn half and half."""
    if rule == "none":
        return None
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise InputError("configuration key train.class_weights: balanced weights need both classes in the train split")
    shares = class_shares(labels, class_sampling)
    return 1.0, float(shares[0] / shares[1])


def training_class_odds(
    labels: np.ndarray, weights: tuple[float, float] | None, class_sampling: str
) -> tuple[float, float]:
    """(1, r): how much more the training loss weighs a positive, relative to a negative,
    than the train split's own class rates do: sampling share x cross-entropy weight /
    natural share. A predictor fitted at the natural rates (the wide start) matches the
    training objective after adding log(r) to its positive logit."""
    drawn = class_shares(labels, class_sampling)
    natural = class_shares(labels, "natural")
    weight = (1.0, 1.0) if weights is None else weights
    factors = drawn * np.asarray(weight) / natural
    return 1.0, float(factors[1] / factors[0])
