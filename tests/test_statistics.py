"""The study's statistics against direct computations: paired bootstrap, Holm, time to
target, and the gradient noise scale on a problem with a known answer."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from seqsetvae.evaluation.metrics import bootstrap_ci, cluster_of_ids
from seqsetvae.evaluation.paired import holm, paired_differences, two_sided_p
from seqsetvae.reports.study import first_reaching, mean_curve
from seqsetvae.training.noise_scale import measure_halves, noise_terms, simple_noise_scale


def _scores(rng, labels, signal):
    return 1 / (1 + np.exp(-(signal * (labels - 0.5) + rng.standard_normal(len(labels)))))


def test_paired_bootstrap_equals_a_direct_loop():
    rng = np.random.default_rng(0)
    labels = (rng.random(60) < 0.3).astype(np.int64)
    groups = {"a": np.vstack([_scores(rng, labels, 2.0) for _ in range(2)]), "b": _scores(rng, labels, 0.5)[None, :]}
    resamples, seed = 200, 7
    got = paired_differences(labels, groups, [("a", "b")], resamples, seed)[0]

    # the documented draws, then sklearn on every resample, in plain loops
    draw = np.random.default_rng(seed)
    patients = draw.integers(0, 60, size=(resamples, 60))
    seeds = {name: draw.integers(0, len(s), size=(resamples, len(s))) for name, s in groups.items()}
    for metric, score in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
        diffs = []
        for r in range(resamples):
            y = labels[patients[r]]
            if y.min() == y.max():
                continue
            value = {name: np.mean([score(y, s[k][patients[r]]) for k in seeds[name][r]]) for name, s in groups.items()}
            diffs.append(value["a"] - value["b"])
        diffs = np.array(diffs)
        estimate = np.mean([score(labels, row) for row in groups["a"]]) - score(labels, groups["b"][0])
        assert got[metric]["estimate"] == pytest.approx(estimate, abs=1e-12)
        assert got[metric]["ci"] == pytest.approx(np.percentile(diffs, [2.5, 97.5]).tolist(), abs=1e-12)
        assert got[metric]["p"] == pytest.approx(min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))
        assert got[metric]["p_adjusted"] == got[metric]["p"]  # one comparison: Holm changes nothing


def _subject_samples(rng, subjects=40):
    """A MEDS-like test split: 1 to 5 samples per subject, ids `subject@time`."""
    per_subject = rng.integers(1, 6, size=subjects)
    ids = [f"{s}@2150-01-0{k + 1}T00:00:00" for s in range(subjects) for k in range(per_subject[s])]
    labels = (rng.random(len(ids)) < 0.3).astype(np.int64)
    return ids, labels


def _cluster_resamples(ids, resamples, draw):
    """The documented cluster draws, in plain loops: sorted subjects drawn with
    replacement, each bringing all its samples."""
    subjects = cluster_of_ids(ids)
    names = np.unique(subjects)
    drawn = draw.integers(0, len(names), size=(resamples, len(names)))
    return [np.concatenate([np.flatnonzero(subjects == names[c]) for c in row]) for row in drawn]


def test_cluster_bootstrap_resamples_subjects_with_all_their_samples():
    rng = np.random.default_rng(1)
    ids, labels = _subject_samples(rng)
    scores = _scores(rng, labels, 1.5)
    resamples, seed = 300, 3
    got = bootstrap_ci(labels, scores, resamples, seed, clusters=cluster_of_ids(ids))
    aurocs, auprcs = [], []
    for rows in _cluster_resamples(ids, resamples, np.random.default_rng(seed)):
        if labels[rows].min() == labels[rows].max():
            continue
        aurocs.append(roc_auc_score(labels[rows], scores[rows]))
        auprcs.append(average_precision_score(labels[rows], scores[rows]))
    assert got["skipped_single_class"] == resamples - len(aurocs)
    assert got["auroc_ci"] == pytest.approx(np.percentile(aurocs, [2.5, 97.5]).tolist(), abs=1e-12)
    assert got["auprc_ci"] == pytest.approx(np.percentile(auprcs, [2.5, 97.5]).tolist(), abs=1e-12)
    assert got["unit"].startswith("subject")
    # one sample per subject (ids sorting as the samples do): the plain bootstrap, draw for draw
    single = [f"{i:04d}" for i in range(len(labels))]
    assert (
        bootstrap_ci(labels, scores, 100, 5, clusters=cluster_of_ids(single))["auroc_ci"]
        == (bootstrap_ci(labels, scores, 100, 5)["auroc_ci"])
    )


def test_paired_cluster_bootstrap_equals_a_direct_loop():
    rng = np.random.default_rng(2)
    ids, labels = _subject_samples(rng)
    groups = {"a": _scores(rng, labels, 2.0)[None, :], "b": _scores(rng, labels, 0.5)[None, :]}
    resamples, seed = 200, 4
    got = paired_differences(labels, groups, [("a", "b")], resamples, seed, clusters=cluster_of_ids(ids))[0]
    draw = np.random.default_rng(seed)
    diffs = []
    for rows in _cluster_resamples(ids, resamples, draw):
        if labels[rows].min() == labels[rows].max():
            continue
        diffs.append(
            roc_auc_score(labels[rows], groups["a"][0][rows]) - roc_auc_score(labels[rows], groups["b"][0][rows])
        )
    assert got["auroc"]["ci"] == pytest.approx(np.percentile(diffs, [2.5, 97.5]).tolist(), abs=1e-12)
    assert got["bootstrap"]["unit"].startswith("subject")


def test_paired_ci_is_narrower_than_the_marginal_difference_and_finds_a_real_gap():
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.25).astype(np.int64)
    shared = rng.standard_normal(400)  # what both models get right or wrong together
    strong = 1 / (1 + np.exp(-(2.0 * (labels - 0.5) + shared)))
    weak = 1 / (1 + np.exp(-(0.8 * (labels - 0.5) + shared + 0.6 * rng.standard_normal(400))))
    result = paired_differences(labels, {"strong": strong[None], "weak": weak[None]}, [("strong", "weak")], 500, 0)[0]
    assert result["auroc"]["estimate"] > 0.05 and result["auroc"]["ci"][0] > 0 and result["auroc"]["p_adjusted"] < 0.01
    same = paired_differences(labels, {"x": strong[None], "y": strong[None]}, [("x", "y")], 200, 0)[0]
    assert same["auroc"]["estimate"] == 0 and same["auroc"]["ci"] == [0.0, 0.0] and same["auroc"]["p"] == 1.0


def test_holm_adjustment():
    # m = 4: sorted p 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([0.2]) == [0.2]
    assert two_sided_p(np.array([0.1, 0.2, -0.1, 0.3])) == pytest.approx(0.5)


def test_time_to_target_on_a_hand_made_curve():
    curve = pd.DataFrame(
        {
            "samples": [100, 200, 300, 400],
            "steps": [25, 50, 75, 100],
            "train_seconds": [10.0, 20.0, 30.0, 40.0],
            "wall_seconds": [12.0, 24.0, 36.0, 48.0],
            "val_auroc": [0.6, 0.79, 0.81, 0.8],
        }
    )
    assert first_reaching(curve, 0.8) == {
        "samples_to_target": 300.0,
        "steps_to_target": 75.0,
        "seconds_to_target": 30.0,
        "wall_seconds_to_target": 36.0,
    }
    assert first_reaching(curve, 0.6)["steps_to_target"] == 25.0
    assert first_reaching(curve, 0.9)["samples_to_target"] is None


def test_mean_curve_averages_seeds_point_by_point():
    class R:
        def __init__(self, seed, aurocs):
            self.seed = seed
            n = len(aurocs)
            self.validations = pd.DataFrame(
                {
                    "validation": range(1, n + 1),
                    "samples": [100 * (i + 1) for i in range(n)],
                    "step": [10 * (i + 1) for i in range(n)],
                    "train_time_s": [1.0 * (i + 1) for i in range(n)],
                    "wall_time_s": [2.0 * (i + 1) for i in range(n)],
                    "val_auroc": aurocs,
                }
            )

    curve = mean_curve([R(0, [0.5, 0.7, 0.9]), R(1, [0.7, 0.9])])  # seed 1 stopped early: only common points
    assert curve["val_auroc"].tolist() == pytest.approx([0.6, 0.8])
    assert curve["val_auroc_min"].tolist() == pytest.approx([0.5, 0.7]) and curve["samples"].tolist() == [100, 200]


def test_noise_scale_of_linear_regression_matches_its_known_value():
    """Squared loss on y = x.w* + noise: per-sample gradients g_i = (x_i.w - y_i) x_i, so the true
    |G|^2 and tr(Sigma) are the mean and covariance of g_i over the (large) dataset."""
    rng = np.random.default_rng(0)
    n, d = 20000, 5
    x = rng.standard_normal((n, d))
    y = x @ np.ones(d) + 0.5 * rng.standard_normal(n)
    w = np.zeros(d) + 0.9  # the point where the gradient is measured (near w*: noisy gradients)
    per_sample = (x @ w - y)[:, None] * x
    g = per_sample.mean(axis=0)
    truth = np.trace(np.cov(per_sample.T, bias=True)) / (g @ g)

    def gradient(indices):
        return per_sample[indices].mean(axis=0)

    measurements = [measure_halves(gradient, rng.choice(n, size=16, replace=False)) for _ in range(4000)]
    estimate = simple_noise_scale(measurements)
    assert estimate == pytest.approx(truth, rel=0.1)
    assert truth > 16  # the interesting regime: more noise than one measurement's batch
    # the two-size estimators are unbiased: exact expectations give the truth
    g2, trace = noise_terms(g @ g + truth * (g @ g) / 8, g @ g + truth * (g @ g) / 16, 8, 16)
    assert g2 == pytest.approx(g @ g) and trace / g2 == pytest.approx(truth)
    with pytest.raises(ValueError):
        measure_halves(gradient, np.arange(3))
