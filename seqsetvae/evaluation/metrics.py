"""Test-set metrics: point estimates with scikit-learn, bootstrap CIs vectorised.

The bootstrap draws every resample's indices at once and computes AUROC and AUPRC for
all resamples together (rank statistics over a `[resamples, n]` matrix), so 1000
resamples cost milliseconds. The vectorised formulas equal scikit-learn's
`roc_auc_score` and `average_precision_score` on each resample, ties included
(tests/test_evaluate.py checks this).

Where samples come in clusters (a MEDS task's several prediction times of one subject),
the bootstrap resamples **clusters**: all samples of a drawn subject together
(`cluster_draws`). A resample's size then varies with the clusters drawn; resamples of
equal size are stacked and computed together, so the same row formulas serve.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, roc_auc_score

from seqsetvae.evaluation.calibration import calibration_rows, reliability_table

CI_LEVEL = 0.95
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: active if Var_x(E[z|x]) > 0.01
_BOOTSTRAP_CHUNK_CELLS = 4_000_000  # resamples x patients per chunk: bounds memory


def auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row of `[R, n]` labels/scores (Mann-Whitney U with mid-ranks).

    Rows with a single class get NaN.
    """
    ranks = rankdata(scores, method="average", axis=1)  # [R, n], ties share the mean rank
    n_pos = labels.sum(axis=1, dtype=np.float64)
    n_neg = labels.shape[1] - n_pos
    rank_sum = (ranks * labels).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def auprc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision (scikit-learn's definition) of each row of `[R, n]` arrays.

    AP = sum over distinct thresholds of (recall step) x precision. Tied scores form one
    threshold, so every positive contributes the precision at the end of its tie group:
    AP = mean over positives of precision(end of the positive's tie group).
    Rows without a positive get NaN.
    """
    n = labels.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_labels = np.take_along_axis(labels, order, axis=1).astype(np.float64)
    true_pos = np.cumsum(sorted_labels, axis=1)  # [R, n]
    precision = true_pos / np.arange(1, n + 1)
    group_end = np.ones_like(sorted_scores, dtype=bool)
    group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    # index of the end of each position's tie group: a reversed running minimum
    end_index = np.where(group_end, np.arange(n), n)
    end_index = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(precision, end_index, axis=1)
    n_pos = sorted_labels.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision_at_end * sorted_labels).sum(axis=1) / n_pos
    return np.where(n_pos > 0, ap, np.nan)


def bootstrap_unit(evaluate: dict, data_format: str) -> str:
    """`evaluate.bootstrap_unit` resolved: `auto` is `subject` for MEDS, else `patient`."""
    unit = evaluate.get("bootstrap_unit", "auto")
    return ("subject" if data_format == "meds" else "patient") if unit == "auto" else unit


def clusters_of(ids, unit: str) -> np.ndarray | None:
    """The bootstrap's clusters of the samples `ids` (None: each sample its own)."""
    return cluster_of_ids(ids) if unit == "subject" else None


def cluster_of_ids(ids) -> np.ndarray:
    """The subject of each MEDS sample id (`subject_id` or `subject_id@prediction_time`)."""
    return np.array([str(i).split("@", 1)[0] for i in ids])


def cluster_draws(
    n: int, resamples: int, rng: np.random.Generator, clusters=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bootstrap resamples of n samples as [(resample numbers [k], indices [k, m])], the
    resamples of one size m together. Without `clusters` (one label per sample), samples
    are drawn: `rng.integers(0, n, (resamples, n))`, one block. With `clusters` [n] (any
    labels), clusters are drawn, `rng.integers(0, C, (resamples, C))` over the sorted
    distinct clusters, and every drawn cluster brings all its samples."""
    if clusters is None:
        return [(np.arange(resamples), rng.integers(0, n, size=(resamples, n)))]
    names, cluster = np.unique(np.asarray(clusters), return_inverse=True)
    members = np.argsort(cluster, kind="stable")  # samples grouped by cluster
    size = np.bincount(cluster, minlength=len(names))
    start = np.cumsum(size) - size
    drawn = rng.integers(0, len(names), size=(resamples, len(names)))
    totals = size[drawn].sum(axis=1)
    blocks = []
    for total in np.unique(totals):
        which = np.flatnonzero(totals == total)
        picks = drawn[which]  # [k, C]
        counts = size[picks]
        # each drawn cluster's members, in draw order, one row per resample
        offsets = np.arange(int(total)) - np.repeat(np.cumsum(counts, axis=1) - counts, counts.ravel()).reshape(
            len(which), -1
        )
        first = np.repeat(start[picks].ravel(), counts.ravel()).reshape(len(which), -1)
        blocks.append((which, members[first + offsets]))
    return blocks


def bootstrap_ci(labels: np.ndarray, probabilities: np.ndarray, resamples: int, seed: int, clusters=None) -> dict:
    """Percentile bootstrap CIs of AUROC, AUPRC, ECE and the calibration slope and
    intercept over patients (over clusters of samples, with `clusters`).

    Resamples holding one class only have no AUROC/AUPRC: they are skipped and counted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n = len(labels)
    rng = np.random.default_rng(seed)
    auroc, auprc = np.empty(resamples), np.empty(resamples)
    calibration = {name: np.empty(resamples) for name in ("ece", "slope", "intercept")}
    for which, indices in cluster_draws(n, resamples, rng, clusters):  # every resample drawn up front
        chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // max(indices.shape[1], 1))
        for start in range(0, len(which), chunk):
            at, rows = which[start : start + chunk], indices[start : start + chunk]
            auroc[at] = auroc_rows(labels[rows], probabilities[rows])
            auprc[at] = auprc_rows(labels[rows], probabilities[rows])
            for name, values in calibration_rows(labels[rows], probabilities[rows]).items():
                if name in calibration:
                    calibration[name][at] = values
    valid = ~np.isnan(auroc)  # a one-class resample has neither metric
    tail = 100 * (1 - CI_LEVEL) / 2
    result = {
        "resamples": int(resamples),
        "seed": int(seed),
        "skipped_single_class": int((~valid).sum()),
        "level": CI_LEVEL,
        "method": "percentile",
        **({"unit": "subject (all samples of a drawn subject)"} if clusters is not None else {}),
    }
    calibration = {name: values[valid] for name, values in calibration.items()}
    for name, values in (("auroc", auroc[valid]), ("auprc", auprc[valid]), *calibration.items()):
        values = values[np.isfinite(values)]  # a resample without a finite recalibration fit
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
        result[f"{name}_ci"] = [_finite_or_none(low), _finite_or_none(high)]
    return result


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, resamples: int, seed: int, clusters=None
) -> dict:
    """AUROC/AUPRC and calibration with 95% bootstrap CIs (over clusters of samples, with
    `clusters`), accuracy at 0.5, Brier score, positive rates."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = (probabilities > 0.5).astype(np.int64)
    two_classes = len(np.unique(labels)) == 2
    bootstrap = bootstrap_ci(labels, probabilities, resamples, seed, clusters)
    # seqsetvae.evaluation.calibration: ECE (10 equal-width bins), logistic recalibration
    # slope and intercept (slope fixed at 1), the reliability table by deciles of risk
    point = calibration_rows(labels, probabilities)
    calibration = {}
    for name in ("ece", "slope", "intercept"):
        calibration[name] = _finite_or_none(point[name][0])
        calibration[f"{name}_ci"] = bootstrap.pop(f"{name}_ci")
    calibration["reliability"] = reliability_table(labels, probabilities)
    return {
        "n_patients": int(len(labels)),
        **({"n_subjects": int(len(np.unique(clusters)))} if clusters is not None else {}),
        "n_positive": int(labels.sum()),
        "auroc": float(roc_auc_score(labels, probabilities)) if two_classes else None,
        "auroc_ci": bootstrap.pop("auroc_ci"),
        "auprc": float(average_precision_score(labels, probabilities)) if two_classes else None,
        "auprc_ci": bootstrap.pop("auprc_ci"),
        "bootstrap": bootstrap,
        "accuracy": float(accuracy_score(labels, predicted)),
        "threshold": 0.5,
        "brier": float(brier_score_loss(labels, probabilities, pos_label=1)),
        "calibration": calibration,
        "positive_rate": {
            "observed": float(labels.mean()),
            "predicted": float(predicted.mean()),
            "mean_probability": float(probabilities.mean()),
        },
    }


class ActiveUnits:
    """Streaming variance, across sets, of the posterior means (Burda et al. 2016).

    Batches are merged with Chan et al.'s pairwise update in float64, so the whole
    test set's `[sets, latent]` means never have to be held at once.
    """

    def __init__(self, threshold: float = ACTIVE_UNIT_THRESHOLD):
        self.threshold = threshold
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, mu: np.ndarray) -> None:
        """Add `mu [sets, latent]`, the posterior means of a batch's real sets."""
        mu = np.asarray(mu, dtype=np.float64)
        if mu.shape[0] == 0:
            return
        count = mu.shape[0]
        mean = mu.mean(axis=0)
        m2 = ((mu - mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / total
        self.mean = self.mean + delta * count / total
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        """Per-unit variance (population, ddof=0) of the posterior means."""
        if self.mean is None:
            return np.zeros(0)
        return self.m2 / self.count

    def summary(self) -> dict:
        variance = self.variance
        return {
            "active": int((variance > self.threshold).sum()),
            "units": int(len(variance)),
            "threshold": self.threshold,
            "sets": int(self.count),
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
