"""Calibration of predicted risks: expected calibration error, logistic recalibration
(slope and intercept) and a reliability table, each for many bootstrap resamples at once.

Discrimination (AUROC) ignores what the probabilities say; class weights and label
smoothing move them, and a batch size can change calibration while leaving ranking
alone. The recalibration model is logit P(y = 1) = a + b logit(p) (Cox 1958):
- the **slope** b is the fitted b (1: ideal; below 1: predictions too extreme),
- the **intercept** is a with b fixed at 1 (calibration-in-the-large; 0: ideal; below
  0: risks overestimated), as TRIPOD and Van Calster et al. (2019) report them.
Both are maximum-likelihood fits by Newton's method, vectorised over the rows of a
`[resamples, n]` matrix (a 2 x 2 system per row), so a bootstrap costs milliseconds.
The expected calibration error uses ten equal-width bins of the predicted risk.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

ECE_BINS = 10
RELIABILITY_GROUPS = 10  # deciles of predicted risk
_EPS = 1e-12
_ITERATIONS = 50


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)  # a risk of exactly 0 or 1 has no logit
    return np.log(p) - np.log1p(-p)


def ece_rows(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error of each row: sum over equal-width bins of
    (share of patients in the bin) x |observed rate - mean predicted risk|."""
    labels, probabilities = np.atleast_2d(labels).astype(np.float64), np.atleast_2d(probabilities)
    rows, n = labels.shape
    which = np.minimum((probabilities * bins).astype(np.int64), bins - 1)  # [R, n]; p = 1 in the last bin
    cell = (np.arange(rows)[:, None] * bins + which).ravel()
    observed = np.bincount(cell, weights=labels.ravel(), minlength=rows * bins).reshape(rows, bins)
    predicted = np.bincount(cell, weights=probabilities.ravel(), minlength=rows * bins).reshape(rows, bins)
    return np.abs(observed - predicted).sum(axis=1) / n  # |sum y - sum p| / n per bin = share x |rate gap|


def _log_likelihood(y: np.ndarray, eta: np.ndarray) -> np.ndarray:
    return (y * eta - np.logaddexp(0.0, eta)).sum(axis=1)


def _damped(ll, params: list[np.ndarray], steps: list[np.ndarray]) -> list[np.ndarray]:
    """Newton steps halved, row by row, until the log-likelihood does not fall: a
    plain Newton step overshoots from far away (an overconfident model's logits)."""
    steps = [np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0) for s in steps]  # a singular row stays put
    before = ll(*params)
    scale = np.ones_like(before)
    for _ in range(40):
        after = ll(*(p + scale * s for p, s in zip(params, steps)))
        worse = ~(after >= before - 1e-12)  # NaN counts as worse
        if not worse.any():
            break
        scale = np.where(worse, scale / 2, scale)
    return [p + scale * s for p, s in zip(params, steps)]


def recalibration_rows(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slope, intercept) of each row; NaN where a row has one class only or the risk
    separates the classes (no finite maximum-likelihood fit)."""
    y = np.atleast_2d(labels).astype(np.float64)
    x = logit(np.atleast_2d(probabilities))
    rate = np.clip(y.mean(axis=1), 1e-6, 1 - 1e-6)
    # slope: Newton on (a, b) of logit P = a + b x, from the base rate (b = 0), damped
    a, b = np.log(rate) - np.log1p(-rate), np.zeros(y.shape[0])
    for _ in range(_ITERATIONS):
        p = expit(a[:, None] + b[:, None] * x)
        w = p * (1 - p)
        g_a, g_b = (y - p).sum(1), ((y - p) * x).sum(1)
        h_aa, h_ab, h_bb = w.sum(1), (w * x).sum(1), (w * x * x).sum(1)
        det = h_aa * h_bb - h_ab**2
        det = np.where(np.abs(det) < _EPS, np.nan, det)
        step_a, step_b = (h_bb * g_a - h_ab * g_b) / det, (h_aa * g_b - h_ab * g_a) / det
        a, b = _damped(lambda a_, b_: _log_likelihood(y, a_[:, None] + b_[:, None] * x), [a, b], [step_a, step_b])
        if np.all(np.nan_to_num(np.abs(step_a) + np.abs(step_b)) < 1e-10):
            break
    slope = b
    # intercept: Newton on a of logit P = a + x (slope fixed at 1), damped
    c = np.zeros(y.shape[0])
    for _ in range(_ITERATIONS):
        p = expit(c[:, None] + x)
        step = (y - p).sum(1) / np.maximum((p * (1 - p)).sum(1), _EPS)
        (c,) = _damped(lambda c_: _log_likelihood(y, c_[:, None] + x), [c], [step])
        if np.all(np.abs(step) < 1e-10):
            break
    # one class only, or classes separated by the risk: no finite maximum-likelihood fit
    one_class = (y.sum(1) == 0) | (y.sum(1) == y.shape[1])
    separated = np.where(y == 0, x, -np.inf).max(1) < np.where(y == 1, x, np.inf).min(1)
    slope = np.where(one_class | separated | ~np.isfinite(slope), np.nan, slope)
    return slope, np.where(one_class | ~np.isfinite(c), np.nan, c)


def reliability_table(labels: np.ndarray, probabilities: np.ndarray, groups: int = RELIABILITY_GROUPS) -> list[dict]:
    """Patients in `groups` groups of equal size by predicted risk (deciles): per group
    the mean predicted risk, the observed rate and the count (a reliability diagram's points)."""
    labels, probabilities = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(probabilities, kind="stable")
    table = []
    for part in np.array_split(order, min(groups, len(order))):
        table.append(
            {
                "n": int(len(part)),
                "mean_predicted": float(probabilities[part].mean()),
                "observed": float(labels[part].mean()),
            }
        )
    return table


def calibration_rows(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """ECE, slope and intercept of each row of `[R, n]` arrays."""
    slope, intercept = recalibration_rows(labels, probabilities)
    return {"ece": ece_rows(labels, probabilities), "slope": slope, "intercept": intercept}
