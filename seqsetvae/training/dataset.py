"""Training batches from one split's shards: vectorised gathers, then the padded collate."""

from __future__ import annotations

import numpy as np

from seqsetvae.batching import Batch, collate
from seqsetvae.data.reader import ShardReader


class ShardBatches:
    """`batches(indices) -> Batch`: the patients `indices` of a split, collated.

    `ShardReader.take` gathers the patients' events with numpy fancy indexing over
    memory-mapped shards, `collate` pads them into the two-level batch; neither loops
    over events in Python.
    """

    def __init__(self, shards_dir: str, split: str) -> None:
        self.reader = ShardReader(shards_dir, split)
        self.split = split

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def lengths(self) -> np.ndarray:
        """int64 [P]: events per patient (what the length-grouped sampler sorts by)."""
        return np.asarray(self.reader.n_events, dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.reader.labels, dtype=np.int64)

    def __call__(self, indices: np.ndarray) -> Batch:
        return collate(self.reader.take(indices))
