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


@dataclass
class RaggedPatients:
    patient_ids: list[str]  # [P]
    labels: np.ndarray  # int64 [P], 0/1
    variable_ids: np.ndarray  # int32 [E], vocabulary ids
    values: np.ndarray  # float32 [E], z-normalised
    set_times: np.ndarray  # float32 [S], minutes (the input's time axis, in minutes)
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
