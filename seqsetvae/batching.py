"""The model's batch: B patients packed into one two-level structure, built without loops.

Layout (chosen for speed; see docs/model.md, section 4):

- **Events are packed**, not padded: one row per real event, `[E]`, in the order of the
  input (patient, then set, then event). Every per-event operation of the set encoder
  and decoder runs on exactly the E real events, so `fill_ratio` is 1.0 whatever the
  set sizes are. `event_set [E]` says which set an event belongs to; attention inside a
  set is a segment softmax over these ids (see `seqsetvae.model`).
- **Within-set event pairs** `pair_query [P]`, `pair_key [P]` (P = sum of squared set
  sizes) list every (event, event) pair of one set: the decoder's event-to-event
  attention and the Chamfer loss use them, again without any padding.
- **Sets are packed too** (`[S]`, patient then time order), and scattered into a padded
  `[B, T_max]` grid only for the causal sequence transformer
  (`set_patient`, `set_position`, `sequence_mask`).

`collate(RaggedPatients) -> Batch`; `Batch.to(device)`; `n_patients`, `n_sets`,
`n_events` (real ones), `fill_ratio` (real events / event slots the set encoder and
decoder process) and `sequence_fill_ratio` (real sets / slots of the `[B, T_max]` grid).

**Bucketed padding** (`collate(..., pad=True)`, for a compiled step with CUDA graphs,
which replay one recorded graph per input shape): every count (patients, sets, events,
pairs, grid length, distinct variables) is rounded up to a ladder of sizes at most 25%
apart (`bucket`), so a run sees a few dozen shapes instead of one per batch. The extra
rows form one padding patient: its padding sets hold padding events of value 0, whose
only pairs are with themselves. They touch no real row (every reduction is per set or
per patient), weigh 0 in the losses (`set_weight`, `patient_weight`), and the model
returns real rows only, so padding changes no result.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from seqsetvae.data.ragged import RaggedPatients
from seqsetvae.errors import InputError


@dataclass
class Batch:
    patient_ids: list[str]  # [B]
    labels: torch.Tensor  # int64 [B]
    # events (packed)
    variable_ids: torch.Tensor  # int64 [E], vocabulary ids
    values: torch.Tensor  # float32 [E], z-normalised
    batch_variables: torch.Tensor  # int64 [U], the distinct vocabulary ids of the batch
    event_variable: torch.Tensor  # int64 [E], index into batch_variables
    event_set: torch.Tensor  # int64 [E], set of each event
    event_slot: torch.Tensor  # int64 [E], position of the event inside its set
    # within-set event pairs (packed)
    pair_query: torch.Tensor  # int64 [P], event index
    pair_key: torch.Tensor  # int64 [P], event index of the same set
    pairs_per_event: torch.Tensor  # int64 [E], pairs of each query event (its set's size)
    # sets (packed, patient then time order)
    set_sizes: torch.Tensor  # int64 [S]
    set_times: torch.Tensor  # float64 [S], minutes (exact; the time feature is computed before any float32 cast)
    set_patient: torch.Tensor  # int64 [S]
    set_position: torch.Tensor  # int64 [S], index of the set in its patient's sequence
    sets_per_patient: torch.Tensor  # int64 [B]
    # sequences (padded grid for the transformer)
    grid_set: torch.Tensor  # int64 [B, T_max], the set at each grid slot (S: an empty slot)
    sequence_mask: torch.Tensor  # bool [B, T_max], True at real sets
    # what the losses count: 1 for a real set / patient, 0 for bucket padding
    set_weight: torch.Tensor  # float32 [S]
    patient_weight: torch.Tensor  # float32 [B]
    real_sets: int  # the real rows come first: sets [:real_sets], events [:real_events]
    real_events: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            if isinstance(getattr(self, f.name), torch.Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return Batch(**moved)

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory (DataLoader's pin_memory calls this), so
        that `to(cuda, non_blocking=True)` copies it asynchronously."""
        return Batch(
            **{
                f.name: getattr(self, f.name).pin_memory()
                if isinstance(getattr(self, f.name), torch.Tensor)
                else getattr(self, f.name)
                for f in fields(self)
            }
        )

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    @property
    def n_sets(self) -> int:
        return self.real_sets

    @property
    def n_events(self) -> int:
        return self.real_events

    @property
    def n_pairs(self) -> int:
        return int(self.pair_query.shape[0])

    @property
    def padded(self) -> bool:
        return int(self.labels.shape[0]) > self.n_patients

    @property
    def max_sequence_length(self) -> int:
        return int(self.sequence_mask.shape[1])

    @property
    def fill_ratio(self) -> float:
        """Real events / event slots processed by the set encoder and decoder (packed: 1.0)."""
        slots = self.event_set.shape[0]
        return self.n_events / slots if slots else 1.0

    @property
    def sequence_fill_ratio(self) -> float:
        """Real sets / slots of the padded [B, T_max] grid the sequence transformer sees."""
        slots = self.sequence_mask.numel()
        return self.n_sets / slots if slots else 1.0


def _positions_in_segments(sizes: np.ndarray) -> np.ndarray:
    """int64 [sum(sizes)]: 0..size-1 within each consecutive segment."""
    total = int(sizes.sum())
    starts = np.cumsum(sizes) - sizes
    return np.arange(total, dtype=np.int64) - np.repeat(starts, sizes)


def bucket(n: int) -> int:
    """The smallest size >= n of the ladder 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...
    (four steps per doubling: at most 25% padding)."""
    step = 1 << max(n.bit_length() - 3, 1)
    return max(8, -(-n // step) * step)


def collate(patients: RaggedPatients, pad: bool = False) -> Batch:
    """Pack `patients` (one RaggedPatients, any number >= 1) into a Batch, vectorised;
    with `pad`, every count rounded up to its bucket (module docstring).

    Raises InputError naming the patients that hold no set (the model needs at least
    one set per patient), and ValueError if the offsets are inconsistent.
    """
    patients.validate()
    if patients.n_patients == 0:
        raise InputError("collate: a batch needs at least one patient")
    sets_per_patient = patients.sets_per_patient().astype(np.int64)
    empty = np.flatnonzero(sets_per_patient == 0)
    if len(empty):
        names = ", ".join(patients.patient_ids[i] for i in empty[:10])
        raise InputError(f"collate: patient(s) {names} hold no set (no events); the model needs at least one")

    set_sizes = patients.set_sizes().astype(np.int64)
    n_sets, real_events = len(set_sizes), int(set_sizes.sum())
    variable_ids = patients.variable_ids.astype(np.int64)
    values = patients.values.astype(np.float32)
    labels = patients.labels.astype(np.int64)
    set_times = patients.set_times.astype(np.float64)
    extra_pairs = 0  # self-pairs of the last padding event beyond its first
    if pad:
        # one padding patient: padding sets of one event each, the last one holding the
        # rest of the padding events; every padding event pairs with itself only
        extra_sets = bucket(n_sets + 1) - n_sets
        extra_events = bucket(real_events + extra_sets) - real_events
        sets_per_patient = np.append(sets_per_patient, extra_sets)
        set_sizes = np.concatenate([set_sizes, np.ones(extra_sets - 1, np.int64), [extra_events - extra_sets + 1]])
        variable_ids = np.append(variable_ids, np.full(extra_events, variable_ids[0]))
        values = np.append(values, np.zeros(extra_events, np.float32))
        labels = np.append(labels, 0)
        set_times = np.append(set_times, np.zeros(extra_sets))
        real_pairs = int((set_sizes[:n_sets] ** 2).sum())
        extra_pairs = bucket(real_pairs + extra_events) - real_pairs - extra_events
    real_sets, n_sets = n_sets, len(set_sizes)
    set_starts = np.cumsum(set_sizes) - set_sizes

    event_set = np.repeat(np.arange(n_sets, dtype=np.int64), set_sizes)
    event_slot = _positions_in_segments(set_sizes)

    # every ordered (query, key) event pair within a real set: k = a * n + b
    real_sizes = set_sizes[:real_sets]
    pair_set = np.repeat(np.arange(real_sets, dtype=np.int64), real_sizes * real_sizes)
    k = _positions_in_segments(real_sizes * real_sizes)
    n = set_sizes[pair_set]
    pad_events = np.arange(real_events, len(event_set), dtype=np.int64)
    pad_queries = np.concatenate([pad_events, np.repeat(pad_events[-1:], extra_pairs)])
    pair_query = np.concatenate([set_starts[pair_set] + k // n, pad_queries])
    pair_key = np.concatenate([set_starts[pair_set] + k % n, pad_queries])
    pairs_per_event = np.bincount(pair_query, minlength=len(event_set)).astype(np.int64)

    n_patients = len(sets_per_patient)
    set_patient = np.repeat(np.arange(n_patients, dtype=np.int64), sets_per_patient)
    set_position = _positions_in_segments(sets_per_patient)
    # the padding patient's sets all read the sequence state of its first one
    set_position[real_sets:] = 0
    grid_length = int(sets_per_patient[: patients.n_patients].max())
    grid_length = bucket(grid_length) if pad else grid_length
    grid_set = np.full((n_patients, grid_length), n_sets, dtype=np.int64)
    grid_set[set_patient[:real_sets], set_position[:real_sets]] = np.arange(real_sets)
    if pad:
        grid_set[-1, 0] = real_sets
    sequence_mask = grid_set < n_sets

    batch_variables, event_variable = np.unique(variable_ids, return_inverse=True)
    if pad:  # more distinct ids never enter an event: a wider table, the same tokens
        batch_variables = np.append(
            batch_variables, np.full(bucket(len(batch_variables)) - len(batch_variables), batch_variables[0])
        )

    def t(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)

    weight = lambda n, real: t(np.arange(n) < real, torch.float32)  # noqa: E731
    return Batch(
        patient_ids=list(patients.patient_ids),
        labels=t(labels, torch.int64),
        variable_ids=t(variable_ids, torch.int64),
        values=t(values, torch.float32),
        batch_variables=t(batch_variables, torch.int64),
        event_variable=t(event_variable.reshape(-1), torch.int64),
        event_set=t(event_set, torch.int64),
        event_slot=t(event_slot, torch.int64),
        pair_query=t(pair_query, torch.int64),
        pair_key=t(pair_key, torch.int64),
        pairs_per_event=t(pairs_per_event, torch.int64),
        set_sizes=t(set_sizes, torch.int64),
        set_times=t(set_times, torch.float64),
        set_patient=t(set_patient, torch.int64),
        set_position=t(set_position, torch.int64),
        sets_per_patient=t(sets_per_patient, torch.int64),
        grid_set=t(grid_set, torch.int64),
        sequence_mask=t(sequence_mask, torch.bool),
        set_weight=weight(n_sets, real_sets),
        patient_weight=weight(n_patients, patients.n_patients),
        real_sets=real_sets,
        real_events=real_events,
    )


def random_patients(
    n_patients: int,
    mean_sets: float = 110,
    mean_events: float = 300,
    vocab_size: int = 40,
    max_set_size: int = 15,
    seed: int = 0,
) -> RaggedPatients:
    """Random patients shaped like the default data (for tests and benchmarks only).

    Sets per patient vary around `mean_sets` (at least 1); set sizes are 1 + Poisson,
    capped at `max_set_size`, with the mean chosen so events/patient ~ `mean_events`;
    each set holds distinct variables; times increase by irregular minute gaps.
    """
    rng = np.random.default_rng(seed)
    sets_per_patient = np.maximum(1, np.round(mean_sets * rng.lognormal(-0.045, 0.3, n_patients))).astype(np.int64)
    n_sets = int(sets_per_patient.sum())
    max_size = min(max_set_size, vocab_size)
    set_sizes = np.minimum(1 + rng.poisson(max(mean_events / mean_sets - 1.0, 0.0), n_sets), max_size)
    n_events = int(set_sizes.sum())
    # distinct variables inside a set: a random start and consecutive ids
    start = rng.integers(0, vocab_size, n_sets)
    variable_ids = (np.repeat(start, set_sizes) + _positions_in_segments(set_sizes)) % vocab_size
    gaps = np.ceil(rng.exponential(40.0, n_sets))
    patient_start = np.cumsum(sets_per_patient) - sets_per_patient
    cumulative = np.cumsum(gaps)
    set_times = cumulative - np.repeat(cumulative[patient_start] - gaps[patient_start], sets_per_patient)
    return RaggedPatients(
        patient_ids=[f"P{seed}-{i}" for i in range(n_patients)],
        labels=rng.integers(0, 2, n_patients).astype(np.int64),
        variable_ids=variable_ids.astype(np.int32),
        values=rng.standard_normal(n_events).astype(np.float32),
        set_times=set_times.astype(np.float32),
        set_offsets=np.concatenate([[0], np.cumsum(set_sizes)]).astype(np.int64),
        patient_offsets=np.concatenate([[0], np.cumsum(sets_per_patient)]).astype(np.int64),
    )
