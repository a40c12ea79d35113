"""The one in-memory layout of patients: flat arrays plus offsets.

Shards on disk, the reader, and the batch collate all speak this layout, so that a
batch is built by vectorised gathers and never by a Python loop over events.

    patient p owns sets    patient_offsets[p] .. patient_offsets[p+1]
    set s owns events      set_offsets[s] .. set_offsets[s+1]

Sets are in time order within a patient; events in a set are in a deterministic order
(by vocabulary id, then value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int64 indices of the concatenated ranges [starts[i], starts[i] + lengths[i]).

    A running sum of steps: 1 inside a range, a jump at each range's first element
    (two passes over the output, about twice as fast as repeat + arange).
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if not np.all(lengths > 0):
        starts, lengths = starts[lengths > 0], lengths[lengths > 0]
    if len(lengths) == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    steps = np.ones(int(ends[-1]), dtype=np.int64)
    steps[0] = starts[0]
    steps[ends[:-1]] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    return np.cumsum(steps, out=steps)


def exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(x, out=out[1:])
    return out


@dataclass
class RaggedPatients:
    patient_ids: list[str]  # [P]
    labels: np.ndarray  # int64 [P], 0/1
    variable_ids: np.ndarray  # int32 [E], vocabulary ids
    values: np.ndarray  # float32 [E], z-normalised
    set_times: np.ndarray  # float64 [S], minutes (the input's time axis, in minutes)
    set_offsets: np.ndarray  # int64 [S + 1], into events, set_offsets[0] == 0
    patient_offsets: np.ndarray  # int64 [P + 1], into sets, patient_offsets[0] == 0

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    @property
    def n_sets(self) -> int:
        return len(self.set_times)

    @property
    def n_events(self) -> int:
        return len(self.variable_ids)

    def events_per_patient(self) -> np.ndarray:
        """int64 [P]: number of events of each patient."""
        return self.set_offsets[self.patient_offsets[1:]] - self.set_offsets[self.patient_offsets[:-1]]

    def sets_per_patient(self) -> np.ndarray:
        """int64 [P]: number of sets of each patient."""
        return np.diff(self.patient_offsets)

    def set_sizes(self) -> np.ndarray:
        """int64 [S]: number of events of each set."""
        return np.diff(self.set_offsets)

    def validate(self) -> None:
        """Raise ValueError if the offsets are inconsistent (cheap, vectorised)."""
        P, S, E = self.n_patients, self.n_sets, self.n_events
        if self.labels.shape != (P,) or self.patient_offsets.shape != (P + 1,):
            raise ValueError("labels/patient_offsets do not match the number of patients")
        if self.set_offsets.shape != (S + 1,) or self.values.shape != (E,):
            raise ValueError("set_offsets/values do not match the number of sets/events")
        for name, off, end in (("patient_offsets", self.patient_offsets, S), ("set_offsets", self.set_offsets, E)):
            if off[0] != 0 or off[-1] != end or np.any(np.diff(off) < 0):
                raise ValueError(f"{name} must start at 0, end at {end} and never decrease")
        if S and np.any(np.diff(self.set_offsets) == 0):
            raise ValueError("empty set: every set holds at least one event")

    def take(self, indices) -> "RaggedPatients":
        """The patients `indices`, in that order (vectorised gathers, offsets rebuilt)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n_sets = self.sets_per_patient()[indices]
        sets = ranges(self.patient_offsets[indices], n_sets)
        set_sizes = self.set_sizes()[sets]
        events = ranges(self.set_offsets[sets], set_sizes)
        return RaggedPatients(
            patient_ids=[self.patient_ids[i] for i in indices],
            labels=self.labels[indices],
            variable_ids=self.variable_ids[events],
            values=self.values[events],
            set_times=self.set_times[sets],
            set_offsets=exclusive_cumsum(set_sizes),
            patient_offsets=exclusive_cumsum(n_sets),
        )
