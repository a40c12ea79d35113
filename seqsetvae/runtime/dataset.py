"""Training batches from one split's shards: vectorised gathers, then the padded collate."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from seqsetvae.batching import Batch, collate
from seqsetvae.data.reader import ShardReader


class ShardBatches:
    """`batches(indices) -> Batch`: the patients `indices` of a split, collated.

    `ShardReader.take` gathers the patients' events with numpy fancy indexing over
    memory-mapped shards, `collate` pads them into the two-level batch; neither loops
    over events in Python.
    """

    def __init__(self, shards_dir: str, split: str, pad: bool = False) -> None:
        self.reader = ShardReader(shards_dir, split)
        self.split = split
        self.pad = pad  # counts rounded up to buckets (a compiled step with CUDA graphs)

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
        return collate(self.reader.take(indices), pad=self.pad)


class PlannedBatches(torch.utils.data.Dataset):
    """Item i: the collated batch of `plan[i]` (index arrays in the order of training)."""

    def __init__(self, batches: ShardBatches, plan: list[np.ndarray]) -> None:
        self.batches, self.plan = batches, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        return self.batches(self.plan[i])


def prefetched(batches: ShardBatches, plan: list[np.ndarray], workers: int, pin: bool) -> Iterator[Batch]:
    """The batches of `plan`, in its order: built here (`workers` 0) or by DataLoader
    worker processes ahead of the training step (two batches each), in pinned memory
    when `pin`. The plan, i.e. the sampler, stays the one source of batch order, so a
    run is the same with any number of workers."""
    if workers == 0:
        for indices in plan:
            yield batches(indices).pin_memory() if pin else batches(indices)
        return
    loader = torch.utils.data.DataLoader(
        PlannedBatches(batches, plan),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=2,
        generator=torch.Generator().manual_seed(0),  # its worker seeds, not a draw from the training's stream
    )
    yield from loader
