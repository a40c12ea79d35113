"""Every schedule of a run as a function of its progress in epochs (samples seen / train size).

The batch-size study compares runs that see the same number of samples. If a schedule
counted optimiser steps, batch size 16 would take 16 times fewer steps than batch size 1
through the same warm-up and never reach the phases that batch size 1 reaches, so every
schedule here is in epochs (`model.*_epochs`, `train.lr_warmup_epochs`, the cosine over
the whole budget `train.epochs`). Experts can pin a loss schedule to optimiser steps
(`model.*_steps`, docs/model.md's original 5000/5000/10000) or use the original's step-based
warm restarts (`train.lr_schedule: cosine_restarts`).

Progress is measured after the step's batch: a step that ends the first epoch has
progress 1.0, whatever the batch size. Nothing here has state: a resumed run recomputes
every weight and learning rate from its counters.
"""

from __future__ import annotations

import math

from seqsetvae.model import LossWeights


def ramp(done: float, length: float | None) -> float:
    """0 -> 1 linearly over `length` (1 at once for a length of 0)."""
    return min(1.0, done / length) if length else 1.0


def _progress(model: dict, name: str, step: int, epochs: float) -> float:
    """Share of the `name` warm-up done: by steps when `model.{name}_steps` is set, else epochs."""
    steps = model.get(f"{name}_steps")
    return ramp(step, steps) if steps is not None else ramp(epochs, model[f"{name}_epochs"])


def loss_weights(model: dict, step: int, epochs: float) -> LossWeights:
    """Training weights after `step` steps and `epochs` epochs (the `model:` section's schedule).

    beta: 0 -> max_beta over the beta warm-up; prediction: 0 -> pred_weight over its
    warm-up; reconstruction: 1 -> 0.5 over the reconstruction decay (docs/model.md).
    """
    return LossWeights(
        beta=model["max_beta"] * _progress(model, "beta_warmup", step, epochs),
        recon=model["recon_weight"] * (1.0 - 0.5 * _progress(model, "recon_decay", step, epochs)),
        pred=model["pred_weight"] * _progress(model, "pred_warmup", step, epochs),
    )


def lr_factor(train: dict, step: int, epochs: float) -> float:
    """The learning rate's multiple of its peak after `step` steps / `epochs` epochs.

    `cosine`: linear warm-up over `lr_warmup_epochs`, then one cosine from 1 down to
    `eta_min_factor` at the end of the budget (`epochs`); `constant`: the warm-up, then 1;
    `cosine_restarts`: the original's SGDR in steps (`scheduler_t0`, `scheduler_t_mult`),
    as torch's CosineAnnealingWarmRestarts computes it, after the same warm-up.
    """
    warm = ramp(epochs, train["lr_warmup_epochs"])
    floor = train["eta_min_factor"]
    kind = train["lr_schedule"]
    if kind == "constant":
        return warm
    if kind == "cosine":
        start, end = train["lr_warmup_epochs"], train["epochs"]
        done = min(1.0, max(0.0, (epochs - start) / (end - start))) if end > start else 1.0
        return warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done)))
    t0, mult = train["scheduler_t0"], train["scheduler_t_mult"]
    if mult == 1:
        t_cur, period = step % t0, t0
    else:
        cycle = int(math.log(step / t0 * (mult - 1) + 1, mult))
        t_cur, period = step - t0 * (mult**cycle - 1) // (mult - 1), t0 * mult**cycle
    return warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t_cur / period)))


def scaled_lr(train: dict, batch_size: int) -> float:
    """Peak learning rate at `batch_size`: train.lr x (B / lr_reference_batch_size)^k, times
    the run's point of the learning-rate grid (`lr_multiplier`, set by `train
    --lr-multiplier`; absent: 1).

    k = 0.5 for `sqrt` (the rule for Adam-type optimisers: the gradient noise falls as
    1/sqrt(B); Malladi et al. 2022), 1 for `linear` (Goyal et al. 2017, for SGD), 0 for `none`.
    """
    power = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[train["lr_scaling"]]
    rule = train["lr"] * (batch_size / train["lr_reference_batch_size"]) ** power
    return rule * train.get("lr_multiplier", 1.0)
