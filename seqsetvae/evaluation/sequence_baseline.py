"""The `gru` baseline: a small recurrent network over hourly bins of the same shards.

`binned_sequences` turns a split's patients into fixed-width time bins (numpy, one sort
over all events of the split); `fit_gru` trains a one-layer GRU on the train split,
keeps the epoch with the best validation AUROC (early stopping) and returns the
test-split probabilities; `gru_baseline` does both for the three splits. Called by
`seqsetvae baseline` (seqsetvae.evaluation.baseline) for `baseline.models: [..., gru]`,
with the `baseline.gru` settings.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from seqsetvae.data.ragged import RaggedPatients

BATCH_SIZE = 64
WEIGHT_DECAY = 1e-2


def binned_sequences(
    patients: RaggedPatients, vocab_size: int, bin_hours: float, max_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs float32 [P, T, 2 V], lengths int64 [P]): each patient as a sequence of time bins.

    Bin b of a patient holds the sets with (time - first set time) in
    [b, b + 1) * bin_hours hours. Inputs `[:, :, :V]`: per variable the last value
    measured in the bin (the latest set; within a set, the last event), forward-filled
    from earlier bins, 0 (the train mean in z units) before the first measurement;
    `[:, :, V:]`: 1 where the variable was measured in that bin, else 0. A patient's
    length is its number of bins up to its last set's; a stay longer than `max_bins` bins
    keeps its LAST `max_bins` bins (values measured before them are still carried into
    the first kept bin; its mask shows only what was measured in it). T is the longest
    length of the split; bins past a patient's length are 0.
    """
    P, V = patients.n_patients, vocab_size
    set_patient = np.repeat(np.arange(P, dtype=np.int64), patients.sets_per_patient())
    event_set = np.repeat(np.arange(patients.n_sets, dtype=np.int64), patients.set_sizes())
    times = patients.set_times.astype(np.float64)
    first_time = times[patients.patient_offsets[:-1]]  # every patient of a shard holds a set
    set_bin = np.floor((times - first_time[set_patient]) / (60.0 * bin_hours)).astype(np.int64)
    n_bins = set_bin[patients.patient_offsets[1:] - 1] + 1 if P else np.zeros(0, np.int64)
    lengths = np.minimum(n_bins, max_bins)
    skipped = n_bins - lengths  # leading bins dropped from a long stay
    T = int(lengths.max()) if P else 0

    event_patient = set_patient[event_set]
    event_bin = set_bin[event_set] - skipped[event_patient]  # < 0: before the kept window
    in_window = event_bin >= 0
    variables = patients.variable_ids.astype(np.int64)
    # an event before the window counts as bin 0's value only if bin 0 measures nothing later
    key = (event_patient * T + np.maximum(event_bin, 0)) * V + variables
    # events are in time order within a patient, so after a stable sort by key the last
    # event of each key is the latest measurement of that (patient, bin, variable)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    group_last = order[np.flatnonzero(np.r_[sorted_key[1:] != sorted_key[:-1], True])] if len(key) else order
    last = np.full(P * T * V, np.nan, dtype=np.float32)
    last[key[group_last]] = patients.values[group_last]
    observed = np.zeros(P * T * V, dtype=np.float32)
    observed[key[in_window]] = 1.0

    # forward fill along the bins: the index of the latest bin holding a value, by a
    # running maximum over bin indices (-1: nothing yet)
    last = last.reshape(P, T, V)
    holder = np.where(np.isnan(last), np.int32(-1), np.arange(T, dtype=np.int32)[None, :, None])
    holder = np.maximum.accumulate(holder, axis=1)
    filled = np.take_along_axis(last, np.maximum(holder, 0), axis=1)
    filled[holder < 0] = 0.0
    filled[np.arange(T)[None, :] >= lengths[:, None]] = 0.0  # padding past the stay
    inputs = np.concatenate([filled, observed.reshape(P, T, V)], axis=2)
    return inputs.astype(np.float32, copy=False), lengths.astype(np.int64)


class GRUClassifier(nn.Module):
    """GRU over the bins (packed to each patient's length); last hidden state -> logit."""

    def __init__(self, n_inputs: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(n_inputs, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.gru(packed)  # [1, B, H]: the state after each patient's last bin
        return self.head(hidden[-1]).squeeze(-1)


@torch.no_grad()
def predict(model: GRUClassifier, inputs: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """float64 [P]: probabilities of class 1, in batches, in eval mode."""
    model.eval()
    parts = [
        torch.sigmoid(model(inputs[i : i + BATCH_SIZE], lengths[i : i + BATCH_SIZE]))
        for i in range(0, len(lengths), BATCH_SIZE)
    ]
    return torch.cat(parts).double().numpy() if parts else np.zeros(0)


def fit_gru(data: dict, settings: dict, seed: int) -> tuple[np.ndarray, dict]:
    """(test probabilities float64 [P_test], chosen_on_valid) of the GRU.

    `data[split]` = (inputs [P, T, 2 V], lengths [P], labels [P]) for train, valid and test.
    Trained on train (AdamW, BCE with pos_weight n_neg / n_pos of train, batches of 64
    shuffled by a generator seeded with `seed`), scored on valid after every epoch; the
    state of the epoch with the best validation AUROC is kept, and training stops after
    `patience` epochs without improvement. The test split is only predicted, never used
    in a choice. With one class in valid no AUROC exists: all epochs run, the last kept.
    """
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        split: (torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(y.astype(np.float32)))
        for split, (x, lengths, y) in data.items()
    }
    x_train, len_train, y_train = tensors["train"]
    x_valid, len_valid, _ = tensors["valid"]
    y_valid = data["valid"][2]
    model = GRUClassifier(x_train.shape[2], settings["hidden"])
    n_pos = float(y_train.sum())
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y_train) - n_pos) / n_pos))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=WEIGHT_DECAY)
    two_classes = len(np.unique(y_valid)) == 2

    best_state, chosen, since_best = None, {"val_auroc": None, "epoch": 0}, 0
    for epoch in range(1, settings["epochs"] + 1):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), BATCH_SIZE):
            batch = order[i : i + BATCH_SIZE]
            optimiser.zero_grad()
            loss = loss_fn(model(x_train[batch], len_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
        if not two_classes:
            chosen = {"val_auroc": None, "epoch": epoch}
            continue
        auroc = float(roc_auc_score(y_valid, predict(model, x_valid, len_valid)))
        if chosen["val_auroc"] is None or auroc > chosen["val_auroc"]:
            best_state, chosen, since_best = copy.deepcopy(model.state_dict()), {"val_auroc": auroc, "epoch": epoch}, 0
        else:
            since_best += 1
            if since_best >= settings["patience"]:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    x_test, len_test, _ = tensors["test"]
    return predict(model, x_test, len_test), chosen


def gru_baseline(read: dict, settings: dict, seed: int, threads: int | None = None) -> tuple[np.ndarray, dict, dict]:
    """(test probabilities, chosen_on_valid, features) of the `gru` baseline.

    `read[split]` = (patients in the reader's order, vocabulary size) for train, valid
    and test; `settings` = the `baseline.gru` section; `threads`: torch CPU threads
    (None: torch's default).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    data = {}
    for split, (patients, vocab_size) in read.items():
        inputs, lengths = binned_sequences(patients, vocab_size, settings["bin_hours"], settings["max_bins"])
        data[split] = (inputs, lengths, patients.labels.astype(np.int64))
    probabilities, chosen = fit_gru(data, settings, seed)
    features = {
        "n": int(data["train"][0].shape[2]),
        "per_variable": ["last_in_bin_forward_filled", "observed_in_bin"],
        "bin_hours": settings["bin_hours"],
        "max_bins": settings["max_bins"],
        "long_stays": "last max_bins bins kept",
    }
    return probabilities, chosen, features
