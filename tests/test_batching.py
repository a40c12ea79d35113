"""collate: the packed two-level batch holds exactly the input, with consistent indices."""

import numpy as np
import pytest
import torch

from seqsetvae.batching import Batch, bucket, collate, random_patients
from seqsetvae.data.ragged import RaggedPatients
from seqsetvae.errors import InputError


def ragged(sets_per_patient, set_sizes, seed=0) -> RaggedPatients:
    """Patients with the given sets per patient and set sizes (random content)."""
    rng = np.random.default_rng(seed)
    set_sizes = np.asarray(set_sizes, dtype=np.int64)
    spp = np.asarray(sets_per_patient, dtype=np.int64)
    n_events = int(set_sizes.sum())
    return RaggedPatients(
        patient_ids=[f"p{i}" for i in range(len(spp))],
        labels=rng.integers(0, 2, len(spp)).astype(np.int64),
        variable_ids=rng.integers(0, 30, n_events).astype(np.int32),
        values=rng.standard_normal(n_events).astype(np.float32),
        set_times=np.arange(len(set_sizes), dtype=np.float32) * 7.0,
        set_offsets=np.concatenate([[0], np.cumsum(set_sizes)]),
        patient_offsets=np.concatenate([[0], np.cumsum(spp)]),
    )


def test_round_trip_events_sets_and_patients_equal_the_input():
    patients = ragged([3, 1, 2], [2, 1, 4, 3, 1, 5], seed=1)
    batch = collate(patients)
    assert (batch.n_patients, batch.n_sets, batch.n_events) == (3, 6, 16)
    assert batch.patient_ids == ["p0", "p1", "p2"]
    np.testing.assert_array_equal(batch.labels.numpy(), patients.labels)
    np.testing.assert_array_equal(batch.variable_ids.numpy(), patients.variable_ids)
    np.testing.assert_array_equal(batch.values.numpy(), patients.values)
    np.testing.assert_array_equal(batch.set_times.numpy(), patients.set_times)
    # the per-batch vocabulary gathers back to every event's variable
    np.testing.assert_array_equal(batch.batch_variables[batch.event_variable].numpy(), patients.variable_ids)
    assert batch.batch_variables.tolist() == sorted(set(patients.variable_ids.tolist()))
    # event -> set -> patient, and slots inside sets
    assert batch.event_set.tolist() == [0, 0, 1, 2, 2, 2, 2, 3, 3, 3, 4, 5, 5, 5, 5, 5]
    assert batch.event_slot.tolist() == [0, 1, 0, 0, 1, 2, 3, 0, 1, 2, 0, 0, 1, 2, 3, 4]
    assert batch.set_sizes.tolist() == [2, 1, 4, 3, 1, 5]
    assert batch.set_patient.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.set_position.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.sequence_mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert batch.fill_ratio == 1.0
    assert batch.sequence_fill_ratio == pytest.approx(6 / 9)


def test_pairs_are_exactly_the_ordered_event_pairs_of_each_set():
    patients = ragged([2, 2], [3, 1, 2, 4], seed=2)
    batch = collate(patients)
    got = set(zip(batch.pair_query.tolist(), batch.pair_key.tolist()))
    expected = {
        (a, b)
        for s in range(4)
        for a in range(*patients.set_offsets[s : s + 2])
        for b in range(*patients.set_offsets[s : s + 2])
    }
    assert got == expected
    assert batch.n_pairs == 9 + 1 + 4 + 16  # no duplicates either


def test_to_moves_tensors_and_keeps_ids():
    batch = collate(ragged([1, 2], [1, 2, 3]))
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.patient_ids == batch.patient_ids
    assert moved.event_set.dtype == torch.int64 and moved.sequence_mask.dtype == torch.bool
    assert torch.equal(moved.values, batch.values)


def test_patient_without_sets_is_named():
    patients = ragged([2, 0, 1], [1, 2, 1])
    with pytest.raises(InputError, match=r"p1 hold no set"):
        collate(patients)


def test_generated_data_is_shaped_like_the_default():
    patients = random_patients(64, seed=3)
    per_patient_events = patients.events_per_patient().mean()
    per_patient_sets = patients.sets_per_patient().mean()
    sizes = patients.set_sizes()
    assert 270 < per_patient_events < 330 and 100 < per_patient_sets < 120
    assert sizes.min() == 1 and 9 <= sizes.max() <= 15
    # distinct variables inside each set
    batch = collate(patients)
    pairs = batch.pair_query != batch.pair_key
    assert not torch.any(batch.variable_ids[batch.pair_query[pairs]] == batch.variable_ids[batch.pair_key[pairs]])


@pytest.mark.parametrize("batch_size", [8, 16])
def test_fill_ratio_at_least_085_on_default_like_data(batch_size):
    batch = collate(random_patients(batch_size, seed=batch_size))
    # event slots = rows the set encoder/decoder process: one per real event (packed)
    assert batch.event_set.shape[0] == batch.n_events == int(batch.set_sizes.sum())
    assert batch.fill_ratio >= 0.85


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_segment_lengths_cover_their_rows_exactly(seed, pad):
    """The model's segment reductions run with `unsafe=True` (no host copy of the
    lengths): every lengths tensor collate builds must be non-negative and sum to the
    rows it segments, or segment_reduce would read out of bounds."""
    batch = collate(random_patients(6, mean_sets=4, mean_events=15, seed=seed), pad=pad)
    for lengths, rows in (
        (batch.set_sizes, batch.event_set.shape[0]),  # events of each set
        (batch.pairs_per_event, batch.pair_key.shape[0]),  # pairs of each query event
        (batch.sets_per_patient, batch.set_sizes.shape[0]),  # sets of each patient
    ):
        assert lengths.dtype == torch.int64 and bool((lengths >= 0).all())
        assert int(lengths.sum()) == rows
    assert bool((batch.set_sizes > 0).all()) and bool((batch.sets_per_patient > 0).all())


def test_bucket_ladder_has_four_sizes_per_doubling_and_at_most_25_percent_padding():
    assert [bucket(n) for n in (1, 8, 9, 11, 16, 17, 33, 100, 1000, 1025)] == [
        8,
        8,
        10,
        12,
        16,
        20,
        40,
        112,
        1024,
        1280,
    ]
    sizes = np.array([bucket(n) for n in range(1, 20_000)])
    assert np.all(np.diff(sizes) >= 0) and np.all(sizes >= np.arange(1, 20_000))
    assert np.all(sizes[7:] <= 1.25 * np.arange(8, 20_000))
    assert len(np.unique(sizes[(sizes > 1024) & (sizes <= 2048)])) == 4


@pytest.mark.parametrize("seed", range(3))
def test_padded_batch_keeps_every_real_row_and_rounds_every_count_to_a_bucket(seed):
    patients = random_patients(5, mean_sets=7, mean_events=30, seed=seed)
    plain, padded = collate(patients), collate(patients, pad=True)
    S, E, P, B = plain.n_sets, plain.n_events, plain.n_pairs, plain.n_patients
    assert (padded.n_sets, padded.n_events, padded.n_patients) == (S, E, B)
    for count in (
        len(padded.set_sizes),
        len(padded.event_set),
        padded.n_pairs,
        padded.max_sequence_length,
        len(padded.batch_variables),
    ):
        assert count == bucket(count)
    assert len(padded.labels) == B + 1 and len(padded.set_sizes) > S and len(padded.event_set) > E
    # the real prefix of every per-row field is the unpadded batch's
    for name in ("variable_ids", "values", "event_set", "event_slot", "pairs_per_event"):
        torch.testing.assert_close(getattr(padded, name)[:E], getattr(plain, name), msg=name)
    for name in ("set_sizes", "set_times", "set_patient", "set_position"):
        torch.testing.assert_close(getattr(padded, name)[:S], getattr(plain, name), msg=name)
    torch.testing.assert_close(padded.pair_query[:P], plain.pair_query)
    torch.testing.assert_close(padded.pair_key[:P], plain.pair_key)
    torch.testing.assert_close(padded.batch_variables[padded.event_variable[:E]], plain.variable_ids)
    T = plain.max_sequence_length
    assert torch.equal(padded.grid_set[:B, :T], plain.grid_set.where(plain.grid_set < S, len(padded.set_sizes)))
    assert not padded.sequence_mask[:B, T:].any() and padded.sequence_mask[B].tolist()[:2] == [True, False]
    # padding: zero values, weight 0, pairs only with itself
    assert torch.all(padded.values[E:] == 0)
    assert padded.set_weight.tolist() == [1.0] * S + [0.0] * (len(padded.set_sizes) - S)
    assert padded.patient_weight.tolist() == [1.0] * B + [0.0]
    assert torch.equal(padded.pair_query[P:], padded.pair_key[P:]) and bool((padded.pair_query[P:] >= E).all())
    assert bool((padded.set_patient[S:] == B).all())
    assert padded.fill_ratio == E / len(padded.event_set) < 1.0
