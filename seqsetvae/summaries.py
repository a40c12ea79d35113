"""Per-patient summaries of a batch's measurements, in torch: what the wide path reads.

`model.wide: summaries` (docs/learning_rounds.md, round six) gives the classifier
a linear path on the same features the logistic-regression baseline reads
(seqsetvae.evaluation.baseline.patient_features), computed from the packed batch:

- per vocabulary variable `v`: `mean:v` and `last:v` (the normalised value's mean and
  its value at the latest set; 0, the train mean, when never measured: the baseline's
  imputation), `log_count:v` (log1p of the measurements) and `observed:v` (0/1);
- `log_sets`, `log_events` and `log_hours` (log1p of the hours from the first set to
  the last).

The measurement process (which variables were measured, how often) is where most of
the early-prediction label lies; means over a set's tokens and softmax-weighted means
over sets divide counts out, so the deep path cannot form them. One scatter per
quantity over the batch's events, no loop; each patient's row reads its own events only.
"""

from __future__ import annotations

import torch

from seqsetvae.batching import Batch


def summary_width(vocab_size: int) -> int:
    return 4 * vocab_size + 3


@torch.no_grad()
def patient_summaries(batch: Batch, vocab_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, 4 V + 3] (B: the batch's rows, padding included), columns in the order of
    seqsetvae.evaluation.baseline.feature_names; computed in float64, returned in `dtype`."""
    V = vocab_size
    B = batch.sets_per_patient.shape[0]
    device = batch.values.device
    event_patient = batch.set_patient.index_select(0, batch.event_set)  # [E]
    key = event_patient * V + batch.variable_ids  # [E]
    values = batch.values.double()
    count = torch.zeros(B * V, dtype=torch.float64, device=device).index_add_(0, key, torch.ones_like(values))
    total = torch.zeros(B * V, dtype=torch.float64, device=device).index_add_(0, key, values)
    # events are packed in patient, then time order: a group's latest event has its highest index
    positions = torch.arange(key.shape[0], device=device)
    latest = torch.full((B * V,), -1, dtype=torch.int64, device=device).scatter_reduce(0, key, positions, "amax")
    observed = count > 0
    last = torch.where(observed, values.index_select(0, latest.clamp(min=0)), 0.0)
    mean = torch.where(observed, total / count.clamp(min=1.0), 0.0)

    sets = batch.sets_per_patient.double()
    events = torch.zeros(B, dtype=torch.float64, device=device).index_add_(0, event_patient, torch.ones_like(values))
    last_set = torch.cumsum(batch.sets_per_patient, 0) - 1
    first_set = last_set - batch.sets_per_patient + 1
    hours = (batch.set_times.index_select(0, last_set) - batch.set_times.index_select(0, first_set)) / 60.0
    features = torch.cat(
        [
            mean.view(B, V),
            last.view(B, V),
            torch.log1p(count).view(B, V),
            observed.double().view(B, V),
            torch.log1p(sets).unsqueeze(-1),
            torch.log1p(events).unsqueeze(-1),
            torch.log1p(hours.clamp(min=0.0)).unsqueeze(-1),
        ],
        dim=-1,
    )
    return features.to(dtype)
