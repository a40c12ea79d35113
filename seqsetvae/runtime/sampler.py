"""Length-grouped, seeded, resumable batch sampler.

Each epoch: shuffle the patients, cut the shuffled order into mega-batches of
`mega_batch_factor x batch_size` patients, sort each mega-batch by length, cut it into
batches, then shuffle the batch order. Patients in one batch therefore have similar
lengths (little padding) while the epoch stays random. An epoch's batches are a pure
function of (seed, epoch), so the sampler's whole state is (epoch, position): a resumed
run recomputes the epoch and skips the batches already done.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class LengthGroupedBatchSampler:
    """Batches of patient indices (int64 arrays) grouped by length.

    lengths: events per patient. With `max_events_per_batch`, a batch holds at most
    that many real events (a patient longer than the budget gets a batch of its own)
    and at most `batch_size` patients; otherwise exactly `batch_size` patients (the
    epoch's last batch may be smaller).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        mega_batch_factor: int = 32,
        max_events_per_batch: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1 or mega_batch_factor < 1:
            raise ValueError("batch_size and mega_batch_factor must be at least 1")
        if max_events_per_batch is not None and max_events_per_batch < 1:
            raise ValueError("max_events_per_batch must be at least 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.mega_batch_factor = mega_batch_factor
        self.max_events_per_batch = max_events_per_batch
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # batches of `epoch` already handed out
        self._cache: tuple[int, list[np.ndarray]] | None = None

    # -- the epoch plan -------------------------------------------------------------

    def batches(self, epoch: int) -> list[np.ndarray]:
        """All batches of `epoch`, in the order they are served."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        mega = self.mega_batch_factor * self.batch_size
        group = np.arange(n) // mega
        # sort by length inside each mega-batch (stable: ties keep the shuffled order)
        order = order[np.lexsort((self.lengths[order], group))]
        if self.max_events_per_batch is None:
            # mega-batches are whole multiples of batch_size, so only the last batch is short
            batches = np.split(order, np.arange(self.batch_size, n, self.batch_size))
        else:
            batches = self._budget_batches(order, group)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def _budget_batches(self, order: np.ndarray, group: np.ndarray) -> list[np.ndarray]:
        """Greedy cuts of each mega-batch under the event budget (one search per batch)."""
        budget, cap = self.max_events_per_batch, self.batch_size
        cum = np.concatenate([[0], np.cumsum(self.lengths[order])])
        group_end = np.searchsorted(group, group, side="right")  # end of i's mega-batch
        cuts, start, n = [0], 0, len(order)
        while start < n:
            # largest end with cum[end] - cum[start] <= budget; at least one patient
            end = int(np.searchsorted(cum, cum[start] + budget, side="right")) - 1
            end = min(max(end, start + 1), start + cap, int(group_end[start]))
            cuts.append(end)
            start = end
        return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]

    def __len__(self) -> int:
        """Batches per epoch (the current epoch's count under a token budget)."""
        return len(self.batches(self.epoch))

    # -- iteration and state ----------------------------------------------------------

    def __iter__(self) -> Iterator[np.ndarray]:
        """The remaining batches of the current epoch; afterwards the next epoch starts.

        `position` counts a batch as done as soon as it is handed out, so a checkpoint
        taken after processing it resumes with the following batch.
        """
        batches = self.batches(self.epoch)
        while self.position < len(batches):
            self.position += 1
            yield batches[self.position - 1]
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, not {self.seed}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
