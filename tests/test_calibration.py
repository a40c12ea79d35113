"""Calibration metrics against direct computations on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

from seqsetvae.evaluation.calibration import ece_rows, logit, recalibration_rows, reliability_table
from seqsetvae.evaluation.metrics import classification_metrics


def _case(n=400, seed=0, power=1.5):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < p**power).astype(np.int64)  # risks overestimated: slope and intercept move
    return y, p


def _log_likelihood(y, eta):
    return (y * eta - np.logaddexp(0, eta)).sum()


def test_slope_and_intercept_are_the_maximum_likelihood_recalibration():
    y, p = _case()
    x = logit(p)
    slope, intercept = recalibration_rows(y, p)
    a, b = minimize(
        lambda ab: -_log_likelihood(y, ab[0] + ab[1] * x), [0.0, 1.0], method="BFGS", options={"gtol": 1e-10}
    ).x
    c = minimize_scalar(
        lambda c: -_log_likelihood(y, c + x), bounds=(-5, 5), method="bounded", options={"xatol": 1e-12}
    ).x
    assert slope[0] == pytest.approx(b, abs=1e-5) and intercept[0] == pytest.approx(c, abs=1e-6)
    assert intercept[0] < 0  # risks overestimated
    # perfectly calibrated risks: slope 1, intercept 0 in expectation
    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.98, 200_000)
    slope, intercept = recalibration_rows((rng.uniform(size=p.size) < p).astype(int), p)
    assert slope[0] == pytest.approx(1, abs=0.02) and intercept[0] == pytest.approx(0, abs=0.02)


def test_rows_are_fitted_independently_and_degenerate_rows_have_no_fit():
    y, p = _case()
    y2, p2 = _case(seed=3)
    slope, intercept = recalibration_rows(np.stack([y, y2]), np.stack([p, p2]))
    alone = [recalibration_rows(y, p), recalibration_rows(y2, p2)]
    assert np.allclose(slope, [alone[0][0][0], alone[1][0][0]], atol=1e-9)
    assert np.allclose(intercept, [alone[0][1][0], alone[1][1][0]], atol=1e-9)
    one_class = recalibration_rows(np.zeros(10, dtype=int), np.linspace(0.1, 0.9, 10))
    separated = recalibration_rows(np.r_[np.zeros(5, int), np.ones(5, int)], np.linspace(0.1, 0.9, 10))
    assert np.isnan(one_class[0][0]) and np.isnan(one_class[1][0]) and np.isnan(separated[0][0])


def test_ece_and_reliability_against_a_direct_computation():
    y, p = _case(n=1000)
    direct = 0.0
    for b in range(10):
        inside = (p >= b / 10) & ((p < (b + 1) / 10) if b < 9 else (p <= 1))
        if inside.any():
            direct += inside.mean() * abs(y[inside].mean() - p[inside].mean())
    assert ece_rows(y, p)[0] == pytest.approx(direct, abs=1e-12)
    assert ece_rows(np.array([1, 0]), np.array([1.0, 0.0]))[0] == 0.0  # p = 1 falls in the last bin
    table = reliability_table(y, p)
    order = np.argsort(p, kind="stable")
    assert [row["n"] for row in table] == [100] * 10
    assert table[0]["mean_predicted"] == pytest.approx(p[order[:100]].mean())
    assert table[-1]["observed"] == pytest.approx(y[order[900:]].mean())


def test_classification_metrics_report_calibration_with_cis():
    y, p = _case(n=600)
    metrics = classification_metrics(y, p, resamples=200, seed=0)["calibration"]
    slope, intercept = recalibration_rows(y, p)
    assert metrics["slope"] == pytest.approx(slope[0]) and metrics["intercept"] == pytest.approx(intercept[0])
    assert metrics["ece"] == pytest.approx(ece_rows(y, p)[0])
    for name in ("ece", "slope", "intercept"):
        low, high = metrics[f"{name}_ci"]
        assert low < metrics[name] < high
    assert len(metrics["reliability"]) == 10


def test_an_overconfident_model_is_fitted_not_diverged():
    """Risks far too extreme (logits x3, shifted): an undamped Newton step from slope 1
    overshoots to NaN; the fit must still be the maximum-likelihood one."""
    from scipy.special import expit

    rng = np.random.default_rng(2)
    truth = rng.uniform(0.01, 0.5, 1500)
    y = (rng.uniform(size=truth.size) < truth).astype(np.int64)
    p = expit(3 * logit(truth) - 4)
    x = logit(p)
    slope, intercept = recalibration_rows(y, p)
    b = minimize(
        lambda ab: -_log_likelihood(y, ab[0] + ab[1] * x), [0.0, 0.5], method="BFGS", options={"gtol": 1e-10}
    ).x[1]
    c = minimize_scalar(
        lambda c: -_log_likelihood(y, c + x), bounds=(-20, 20), method="bounded", options={"xatol": 1e-12}
    ).x
    assert slope[0] == pytest.approx(b, abs=1e-4) and intercept[0] == pytest.approx(c, abs=1e-6)
    assert slope[0] == pytest.approx(1 / 3, abs=0.1)
