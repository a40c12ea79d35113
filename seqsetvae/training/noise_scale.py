"""The gradient noise scale: would a bigger batch help? (McCandlish et al. 2018, "An
Empirical Model of Large-Batch Training", appendix A.)

With G the true gradient and Sigma the per-sample gradient covariance, a gradient
averaged over B samples has E|G_B|^2 = |G|^2 + tr(Sigma) / B. The "simple" noise scale
B_simple = tr(Sigma) / |G|^2 is the batch size at which the noise in a gradient equals its
signal: batches well below it are dominated by noise (a bigger batch gives nearly
proportionally better steps), batches well above it waste samples. It estimates the
critical batch size.

From the squared norms of gradients averaged over `b_small` and `b_big` samples, the two
unbiased estimators are

    |G|^2    ~ (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
    tr Sigma ~ (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big)

Each estimate alone is noisy (either can be negative); B_simple is the ratio of their
averages over many measurements. Here one measurement takes `patients` random train
patients, computes the gradient of each half (b_small = patients / 2) and their mean
(b_big = patients), at the current parameters, without an optimiser step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from seqsetvae.training.train import Trainer


def noise_terms(sq_small: float, sq_big: float, b_small: float, b_big: float) -> tuple[float, float]:
    """(|G|^2, tr Sigma) estimates from the squared norms of two batch sizes' mean gradients."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def measure_halves(gradient: Callable[[np.ndarray], np.ndarray], indices: np.ndarray) -> dict:
    """One measurement: `gradient(samples)` (the flat mean gradient over those samples) of
    both halves of `indices` (an even number of distinct samples)."""
    if len(indices) < 2 or len(indices) % 2:
        raise ValueError(f"a noise-scale measurement needs an even number (>= 2) of samples, got {len(indices)}")
    half = len(indices) // 2
    first = np.asarray(gradient(indices[:half]), dtype=np.float64)
    second = np.asarray(gradient(indices[half:]), dtype=np.float64)
    sq_small = 0.5 * (float(first @ first) + float(second @ second))
    mean = 0.5 * (first + second)
    sq_big = float(mean @ mean)
    g2, trace = noise_terms(sq_small, sq_big, half, 2 * half)
    return {
        "b_small": half,
        "b_big": 2 * half,
        "sq_norm_small": sq_small,
        "sq_norm_big": sq_big,
        "gradient_sq": g2,
        "trace_sigma": trace,
    }


def simple_noise_scale(measurements: list[dict]) -> float | None:
    """B_simple = mean tr Sigma / mean |G|^2 over `measurements` (None if |G|^2 is not positive)."""
    if not measurements:
        return None
    g2 = float(np.mean([m["gradient_sq"] for m in measurements]))
    trace = float(np.mean([m["trace_sigma"] for m in measurements]))
    return trace / g2 if g2 > 0 else None


def measure_during_training(trainer: Trainer) -> None:
    """One gradient-noise-scale measurement of a training run at its current weights (no
    step, RNG untouched; rank 0 measures, the other ranks count it)."""
    import torch  # here: the report reads this module's estimators without torch

    from seqsetvae.training.schedule import loss_weights

    config = trainer.train["noise_scale"]
    count = len(trainer.state.noise_measurements)
    if not trainer.world.is_main:  # rank 0 measures; the others keep the count
        trainer.state.noise_measurements.append({})
        return
    patients = min(config["patients"], trainer.n_train - trainer.n_train % 2)
    if patients < 2:
        return
    rng = np.random.default_rng([trainer.seed, 1, count])  # independent of the sampler's stream
    indices = rng.choice(trainer.n_train, size=patients, replace=False)
    weights = loss_weights(trainer.settings["model"], trainer.state.step, trainer.epochs_done)
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def gradient(half: np.ndarray) -> np.ndarray:
        batch = trainer.train_batches(np.sort(half)).to(trainer.device)
        with trainer.autocast():
            loss = trainer.model(batch, weights).loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([g.reshape(-1) for g in grads if g is not None]).double().cpu().numpy()

    devices = [trainer.device] if trainer.device.type == "cuda" else []
    # a measurement, not training: the buffers its training-mode passes move (the
    # readout's running mean) are put back, as the RNG is
    buffers = [b.detach().clone() for b in trainer.model.buffers()]
    trainer.model.classifier.sync_ranks = False  # rank 0 measures alone
    try:
        with torch.random.fork_rng(devices=devices, device_type=trainer.device.type):
            measurement = measure_halves(gradient, indices)
    finally:
        trainer.model.classifier.sync_ranks = True
        for buffer, saved in zip(trainer.model.buffers(), buffers):
            buffer.copy_(saved)
    measurement = {"step": trainer.state.step, "epochs": trainer.epochs_done, **measurement}
    trainer.state.noise_measurements.append(measurement)
    trainer.recorder.record({"kind": "noise_scale", **measurement})
