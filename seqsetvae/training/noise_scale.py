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

import numpy as np


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
    return {"b_small": half, "b_big": 2 * half, "sq_norm_small": sq_small, "sq_norm_big": sq_big,
            "gradient_sq": g2, "trace_sigma": trace}  # fmt: skip


def simple_noise_scale(measurements: list[dict]) -> float | None:
    """B_simple = mean tr Sigma / mean |G|^2 over `measurements` (None if |G|^2 is not positive)."""
    if not measurements:
        return None
    g2 = float(np.mean([m["gradient_sq"] for m in measurements]))
    trace = float(np.mean([m["trace_sigma"] for m in measurements]))
    return trace / g2 if g2 > 0 else None
