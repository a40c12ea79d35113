"""Paired comparisons of models scored on the same test patients.

Every run of the study (each batch size and seed, each baseline) predicts the same test
patients, so differences are measured **paired**: one bootstrap resample of patients is
applied to every model at once, and a difference is computed within each resample. The
patient-to-patient variation that all models share cancels, which is why a paired CI is
much narrower than two marginal CIs side by side.

A group is one model trained with one or more seeds, `scores [seeds, patients]`. Its metric
is the mean over its seeds. The two-level bootstrap draws, per resample, the patients
(shared by all groups) and then, per group, its seeds with replacement, so a CI covers
both the test sample and the seed-to-seed variation of training (with two or three
seeds only roughly; the report says how many there were). Deterministic models (the
baselines) are groups of one seed.

The draws, in this order from `numpy.random.default_rng(seed)`: patient indices
`integers(0, n, (resamples, n))` (with `clusters`, a MEDS task's subjects: cluster
indices, every drawn subject bringing all its samples; seqsetvae.evaluation.metrics.
cluster_draws), then for each group in the given order its seed indices
`integers(0, seeds, (resamples, seeds))`. Resamples that hold one class only have no
AUROC or AUPRC and are left out (counted).

p-values are two-sided bootstrap p-values (twice the share of the resampled differences
on the far side of zero, at most 1), adjusted for the number of comparisons with Holm's
step-down method.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from seqsetvae.evaluation.calibration import ece_rows, recalibration_rows
from seqsetvae.evaluation.metrics import _BOOTSTRAP_CHUNK_CELLS, CI_LEVEL, auprc_rows, auroc_rows, cluster_draws


def _slope_rows(labels, scores):
    return recalibration_rows(labels, scores)[0]


def _intercept_rows(labels, scores):
    return recalibration_rows(labels, scores)[1]


def _point(rows):
    return lambda labels, scores: float(rows(labels[None], np.asarray(scores)[None])[0])


# name: (vectorised over resamples, point estimate); calibration: seqsetvae.evaluation.calibration
METRICS = {
    "auroc": (auroc_rows, roc_auc_score),
    "auprc": (auprc_rows, average_precision_score),
    "ece": (ece_rows, _point(ece_rows)),
    "calibration_slope": (_slope_rows, _point(_slope_rows)),
    "calibration_intercept": (_intercept_rows, _point(_intercept_rows)),
}


def point_estimate(labels: np.ndarray, scores: np.ndarray, metric: str) -> float:
    """Mean over seeds (rows of `scores [seeds, n]`) of the metric on all patients."""
    score = METRICS[metric][1]
    return float(np.mean([score(labels, row) for row in np.atleast_2d(scores)]))


def group_bootstrap(
    labels: np.ndarray, groups: dict[str, np.ndarray], resamples: int, seed: int, clusters=None
) -> dict:
    """Per group, the resampled seed-mean AUROC and AUPRC: `{name: {"auroc": [R'], "auprc": [R']}}`.

    R' counts the resamples with both classes (the same ones for every group);
    `"_skipped"` holds the number left out.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    rng = np.random.default_rng(seed)
    blocks = cluster_draws(n, resamples, rng, clusters)  # [(resample numbers, indices)], by size
    seed_draws = {
        name: rng.integers(0, len(np.atleast_2d(s)), size=(resamples, len(np.atleast_2d(s))))
        for name, s in groups.items()
    }
    both = np.empty(resamples, dtype=bool)
    for which, patients in blocks:
        positives = labels[patients].sum(axis=1)
        both[which] = (positives > 0) & (positives < patients.shape[1])
    out: dict = {"_skipped": int((~both).sum())}
    for name, scores in groups.items():
        scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
        per_seed = {metric: np.empty((len(scores), resamples)) for metric in METRICS}
        for s, row in enumerate(scores):
            for which, patients in blocks:
                chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // max(patients.shape[1], 1))
                for start in range(0, len(which), chunk):
                    at, rows = which[start : start + chunk], patients[start : start + chunk]
                    for metric, (vectorised, _) in METRICS.items():
                        per_seed[metric][s, at] = vectorised(labels[rows], row[rows])
        draws = seed_draws[name]  # [R, seeds]
        out[name] = {
            metric: np.take_along_axis(values.T, draws, axis=1).mean(axis=1)[both]  # [R']
            for metric, values in per_seed.items()
        }
    return out


def two_sided_p(differences: np.ndarray) -> float:
    """Bootstrap p-value of "no difference": 2 x the smaller tail share at zero, capped at 1."""
    if len(differences) == 0:
        return float("nan")
    below, above = np.mean(differences <= 0), np.mean(differences >= 0)
    return float(min(1.0, 2.0 * min(below, above)))


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in input order."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted.tolist()


def paired_differences(
    labels: np.ndarray,
    groups: dict[str, np.ndarray],
    pairs: list[tuple[str, str]],
    resamples: int,
    seed: int,
    clusters=None,
) -> list[dict]:
    """For each pair (a, b): metric(a) - metric(b) per metric, with CI, p and Holm's p
    (resampling clusters of samples, with `clusters`).

    Holm's adjustment runs over the pairs, separately per metric.
    """
    labels = np.asarray(labels, dtype=np.int64)
    dist = group_bootstrap(labels, groups, resamples, seed, clusters)
    tail = 100 * (1 - CI_LEVEL) / 2
    results = [{"a": a, "b": b} for a, b in pairs]
    for metric in METRICS:
        p_values = []
        for result, (a, b) in zip(results, pairs):
            diff = dist[a][metric] - dist[b][metric]
            diff = diff[np.isfinite(diff)]  # a resample without a finite recalibration fit
            estimate = point_estimate(labels, groups[a], metric) - point_estimate(labels, groups[b], metric)
            low, high = np.percentile(diff, [tail, 100 - tail]) if len(diff) else (np.nan, np.nan)
            p = two_sided_p(diff)
            p_values.append(p)
            result[metric] = {"estimate": estimate, "ci": [float(low), float(high)], "p": p}
        for result, adjusted in zip(results, holm(p_values) if p_values else []):
            result[metric]["p_adjusted"] = adjusted
    for result in results:
        result["bootstrap"] = {
            "resamples": resamples,
            "seed": seed,
            "skipped_single_class": dist["_skipped"],
            "level": CI_LEVEL,
            "seeds": "averaged; resampled with replacement within each model",
            **({"unit": "subject (all samples of a drawn subject)"} if clusters is not None else {}),
        }
    return results
