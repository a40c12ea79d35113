"""ShardReader: memory-mapped shards, `take` across shards in the order given."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_shards import random_events, run_stage

from seqsetvae.data.ragged import ranges
from seqsetvae.data.reader import ShardReader, map_safetensors


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reader")
    events, labels = random_events(80, seed=7)
    directory, _ = run_stage(tmp, events, labels, {"shards": {"shard_size": 5, "max_sequence_length": 40}})
    return directory


def patient_view(batch, p):
    sets = range(batch.patient_offsets[p], batch.patient_offsets[p + 1])
    lo, hi = batch.set_offsets[sets.start], batch.set_offsets[sets.stop]
    return (
        batch.patient_ids[p],
        int(batch.labels[p]),
        batch.variable_ids[lo:hi].tolist(),
        batch.values[lo:hi].tolist(),
        batch.set_times[sets.start : sets.stop].tolist(),
        np.diff(batch.set_offsets[sets.start : sets.stop + 1]).tolist(),
    )


def test_take_matches_single_patients_in_given_order(shards_dir):
    reader = ShardReader(shards_dir, "train")
    assert len(reader) > 10 and len({*reader.shard.tolist()}) > 3
    indices = np.random.default_rng(0).permutation(len(reader))[:13]
    indices = np.r_[indices, indices[0]]  # a repeated patient too
    batch = reader.take(indices)
    batch.validate()
    assert batch.patient_ids == [reader.patient_ids[i] for i in indices]
    np.testing.assert_array_equal(batch.events_per_patient(), reader.n_events[indices])
    np.testing.assert_array_equal(batch.sets_per_patient(), reader.n_sets[indices])
    np.testing.assert_array_equal(batch.labels, reader.labels[indices])
    for p, i in enumerate(indices):
        single = reader[int(i)]
        assert single.n_patients == 1
        assert patient_view(batch, p) == patient_view(single, 0)


def test_reader_agrees_with_shard_files(shards_dir):
    reader = ShardReader(shards_dir, "valid")
    index = json.loads((shards_dir / "valid" / "index.json").read_text())
    everything = reader.take(np.arange(len(reader)))
    files = [map_safetensors(shards_dir / "valid" / s["file"]) for s in index["shards"]]
    np.testing.assert_array_equal(everything.values, np.concatenate([f["values"] for f in files]))
    np.testing.assert_array_equal(everything.variable_ids, np.concatenate([f["variable_ids"] for f in files]))
    ids = [
        bytes(f["patient_id_bytes"][a:b]).decode()
        for f in files
        for a, b in zip(f["patient_id_offsets"][:-1], f["patient_id_offsets"][1:])
    ]
    assert ids == everything.patient_ids == list(reader.patient_ids)
    base = files[0]["values"]
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)  # a view of the mapped file, not a copy
    assert np.all(np.diff(reader.n_events) >= 0)  # length-sorted
    assert reader.vocab_size == json.loads((shards_dir / "index.json").read_text())["vocab_size"]
    assert everything.variable_ids.max() < reader.vocab_size


def test_edge_cases(shards_dir):
    reader = ShardReader(shards_dir, "test")
    empty = reader.take([])
    assert empty.n_patients == 0 and empty.n_events == 0 and empty.set_offsets.tolist() == [0]
    assert reader[-1].patient_ids == [reader.patient_ids[-1]]
    with pytest.raises(IndexError):
        reader[len(reader)]
    assert ranges(np.array([5, 0, 9]), np.array([2, 0, 3])).tolist() == [5, 6, 9, 10, 11]
