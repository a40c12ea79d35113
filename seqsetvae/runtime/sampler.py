"""Length-grouped, seeded, resumable batch sampler.

Each epoch: shuffle the patients, cut the shuffled order into mega-batches of
`mega_batch_factor x batch_size` patients, sort each mega-batch by length, cut it into
batches, then shuffle the batch order. Patients in one batch therefore have similar
lengths (little padding) while the epoch stays random. An epoch's batches are a pure
function of (seed, epoch), so the sampler's whole state is (epoch, position): a resumed
run recomputes the epoch and skips the batches already done.

With `class_sampling` other than `natural` (train.class_sampling), an epoch is not a
permutation of the patients but a stratified draw of as many: each class gets a share of
the epoch (`class_shares`), the rarer class seen several times (whole passes over it in
random order), the commoner one a random subset; the draw then goes through the same
length grouping.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# the exponent k of each class's share of an epoch, proportional to (its patients)^k
CLASS_SAMPLING_POWER = {"natural": 1.0, "sqrt": 0.5, "balanced": 0.0}


def class_shares(labels: np.ndarray, class_sampling: str) -> np.ndarray:
    """[C] each class's share of an epoch's draws under `class_sampling` (C: the largest
    label + 1; a class without patients gets 0)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64)).astype(np.float64)
    weights = np.where(counts > 0, counts ** CLASS_SAMPLING_POWER[class_sampling], 0.0)
    return weights / weights.sum()


def class_draw_counts(labels: np.ndarray, class_sampling: str) -> np.ndarray:
    """[C] draws per class in an epoch of len(labels) draws (largest remainders)."""
    n = len(labels)
    exact = class_shares(labels, class_sampling) * n
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]] += 1
    return counts


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
        labels: np.ndarray | None = None,
        class_sampling: str = "natural",
    ) -> None:
        if batch_size < 1 or mega_batch_factor < 1:
            raise ValueError("batch_size and mega_batch_factor must be at least 1")
        if class_sampling not in CLASS_SAMPLING_POWER:
            raise ValueError(f"class_sampling must be one of {sorted(CLASS_SAMPLING_POWER)}, not {class_sampling!r}")
        if class_sampling != "natural" and (labels is None or len(labels) != len(lengths)):
            raise ValueError(f"class_sampling {class_sampling!r} needs one label per patient")
        if max_events_per_batch is not None and max_events_per_batch < 1:
            raise ValueError("max_events_per_batch must be at least 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.mega_batch_factor = mega_batch_factor
        self.max_events_per_batch = max_events_per_batch
        self.seed = seed
        self.shuffle = shuffle
        self.class_sampling = class_sampling
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
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
        if self.class_sampling != "natural":
            order = self._class_draw(rng)
        else:
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

    def _class_draw(self, rng: np.random.Generator) -> np.ndarray:
        """A random order of len(labels) patients with class_draw_counts() of each class:
        a class drawn more often than it has patients is passed over whole, each pass in a
        new random order, so its patients are seen equally often (within one)."""
        draws = []
        for label, count in enumerate(class_draw_counts(self.labels, self.class_sampling)):
            members = np.flatnonzero(self.labels == label)
            if count == 0:
                continue
            passes = -(-count // len(members))  # ceil
            draws.append(np.concatenate([rng.permutation(members) for _ in range(passes)])[:count])
        return rng.permutation(np.concatenate(draws))

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
