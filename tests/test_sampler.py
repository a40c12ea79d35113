"""The length-grouped batch sampler: coverage, grouping, budget, seeding, resume."""

from __future__ import annotations

import numpy as np
import pytest

from seqsetvae.runtime.sampler import LengthGroupedBatchSampler


@pytest.fixture
def lengths() -> np.ndarray:
    # long-tailed like real stays: most short, some very long
    return np.random.default_rng(1).lognormal(5.0, 0.8, size=1000).astype(np.int64) + 1


def _epoch(sampler: LengthGroupedBatchSampler) -> list[np.ndarray]:
    return [b.copy() for b in sampler]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
@pytest.mark.parametrize("budget", [None, 2000])
def test_every_patient_exactly_once_per_epoch(lengths, batch_size, budget):
    sampler = LengthGroupedBatchSampler(lengths, batch_size, mega_batch_factor=4, max_events_per_batch=budget, seed=3)
    for epoch in range(3):
        batches = _epoch(sampler)
        assert sampler.epoch == epoch + 1 and sampler.position == 0
        flat = np.concatenate(batches)
        assert np.array_equal(np.sort(flat), np.arange(len(lengths)))
        assert max(len(b) for b in batches) <= batch_size
        if budget is None:
            assert sum(len(b) != batch_size for b in batches) <= 1


def test_batches_group_similar_lengths(lengths):
    sampler = LengthGroupedBatchSampler(lengths, 16, mega_batch_factor=32, seed=0)
    grouped = np.mean([np.ptp(lengths[b]) for b in sampler.batches(0)])
    rng = np.random.default_rng(0)
    random_batches = np.array_split(rng.permutation(len(lengths)), len(lengths) // 16)
    random_spread = np.mean([np.ptp(lengths[b]) for b in random_batches])
    assert grouped < 0.2 * random_spread


def test_batch_order_is_shuffled_and_epochs_differ(lengths):
    sampler = LengthGroupedBatchSampler(lengths, 8, mega_batch_factor=4, seed=0)
    first, second = sampler.batches(0), sampler.batches(1)
    # served in shuffled order, not sorted by length
    means = [lengths[b].mean() for b in first]
    assert not (np.all(np.diff(means) >= 0) or np.all(np.diff(means) <= 0))
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))


def test_same_seed_same_batches_other_seed_differs(lengths):
    a = LengthGroupedBatchSampler(lengths, 8, seed=7).batches(2)
    b = LengthGroupedBatchSampler(lengths, 8, seed=7).batches(2)
    c = LengthGroupedBatchSampler(lengths, 8, seed=8).batches(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_token_budget_respected(lengths):
    budget = 1500
    sampler = LengthGroupedBatchSampler(lengths, 64, mega_batch_factor=4, max_events_per_batch=budget, seed=0)
    batches = sampler.batches(0)
    for b in batches:
        # only a patient longer than the budget may exceed it, alone in its batch
        assert lengths[b].sum() <= budget or len(b) == 1
    assert any(lengths[b].sum() > budget for b in batches)  # the long tail exists
    assert max(len(b) for b in batches) > 5  # short patients are packed together


def test_resume_mid_epoch_continues_identically(lengths):
    full = LengthGroupedBatchSampler(lengths, 8, seed=5)
    reference = _epoch(full) + _epoch(full)

    first = LengthGroupedBatchSampler(lengths, 8, seed=5)
    taken = []
    for i, b in enumerate(first):
        taken.append(b.copy())
        if i == 9:
            break
    state = first.state_dict()
    assert state == {"epoch": 0, "position": 10, "seed": 5}

    resumed = LengthGroupedBatchSampler(lengths, 8, seed=5)
    resumed.load_state_dict(state)
    taken += _epoch(resumed) + _epoch(resumed)
    assert len(taken) == len(reference)
    assert all(np.array_equal(a, b) for a, b in zip(taken, reference))


def test_resume_rejects_other_seed(lengths):
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=1)
    with pytest.raises(ValueError, match="seed 2"):
        sampler.load_state_dict({"epoch": 0, "position": 3, "seed": 2})


def test_unshuffled_plan_is_sorted_within_mega_batches():
    lengths = np.array([5, 1, 4, 2, 3, 9, 7, 8])
    sampler = LengthGroupedBatchSampler(lengths, 2, mega_batch_factor=2, shuffle=False)
    assert [b.tolist() for b in sampler.batches(0)] == [[1, 3], [2, 0], [4, 6], [7, 5]]


@pytest.fixture
def labels() -> np.ndarray:
    # 6% positives, the early sepsis task's rate
    return (np.random.default_rng(2).random(1000) < 0.06).astype(np.int64)


@pytest.mark.parametrize("class_sampling, positive_share", [("natural", None), ("sqrt", "sqrt"), ("balanced", 0.5)])
def test_class_sampling_draws_each_class_its_share(lengths, labels, class_sampling, positive_share):
    """An epoch stays len(train) draws; the positives' share is their rate (natural), the
    square-root rule's, or a half; the rarer class is passed over whole, so every positive
    is drawn equally often (within one), and the negatives at most once."""
    n, positives = len(labels), int(labels.sum())
    if positive_share == "sqrt":
        root = np.sqrt([n - positives, positives])
        positive_share = root[1] / root.sum()
    expected_positives = positives if positive_share is None else round(positive_share * n)
    sampler = LengthGroupedBatchSampler(lengths, 16, seed=4, labels=labels, class_sampling=class_sampling)
    for epoch in range(2):
        drawn = np.concatenate(_epoch(sampler))
        assert len(drawn) == n
        assert labels[drawn].sum() == expected_positives
        seen = np.bincount(drawn, minlength=n)
        assert seen[labels == 1].max() - seen[labels == 1].min() <= 1
        assert seen[labels == 0].max() <= 1
        if class_sampling == "natural":
            assert np.array_equal(np.sort(drawn), np.arange(n))


def test_class_sampling_is_seeded_and_resumes_identically(lengths, labels):
    def sampler():
        return LengthGroupedBatchSampler(lengths, 8, seed=5, labels=labels, class_sampling="balanced")

    full = sampler()
    reference = _epoch(full) + _epoch(full)
    assert not np.array_equal(
        np.concatenate(reference[: len(reference) // 2]), np.concatenate(reference[len(reference) // 2 :])
    )
    first = sampler()
    taken = [b.copy() for _, b in zip(range(10), first)]
    resumed = sampler()
    resumed.load_state_dict(first.state_dict())
    taken += _epoch(resumed) + _epoch(resumed)
    assert all(np.array_equal(a, b) for a, b in zip(taken, reference)) and len(taken) == len(reference)


def test_class_sampling_needs_a_label_per_patient(lengths):
    with pytest.raises(ValueError, match="needs one label per patient"):
        LengthGroupedBatchSampler(lengths, 8, class_sampling="balanced")
    with pytest.raises(ValueError, match="class_sampling must be one of"):
        LengthGroupedBatchSampler(lengths, 8, labels=np.zeros(len(lengths)), class_sampling="oversample")


@pytest.mark.parametrize("class_sampling", ["natural", "sqrt", "balanced"])
def test_balanced_weights_make_each_class_half_of_the_loss_under_any_sampling(labels, class_sampling):
    """train.class_weights: balanced under train.class_sampling: the expected weight of
    each class in an epoch's cross-entropy (draws x weight) is the same, and the wide
    start's shift is log(n_neg / n_pos) whatever the sampling (the objective's odds)."""
    from seqsetvae.runtime.sampler import class_draw_counts
    from seqsetvae.training.optimizer import class_weights, training_class_odds

    weights = class_weights(labels, "balanced", class_sampling)
    draws = class_draw_counts(labels, class_sampling)
    assert weights[0] == 1.0
    assert draws[0] * weights[0] == pytest.approx(draws[1] * weights[1], rel=2e-3)
    negatives, positives = np.bincount(labels)
    assert training_class_odds(labels, weights, class_sampling)[1] == pytest.approx(negatives / positives)
    unweighted = training_class_odds(labels, None, class_sampling)[1]
    assert unweighted == pytest.approx(
        {"natural": 1.0, "sqrt": np.sqrt(negatives / positives), "balanced": negatives / positives}[class_sampling]
    )
