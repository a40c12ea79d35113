"""A run's counters: everything a checkpoint holds besides the model, the optimiser, the
sampler and the RNG states. Saved as JSON (`dataclasses.asdict`) in each checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from seqsetvae.training.noise_scale import simple_noise_scale


def _no_best() -> dict:
    return {"validation": None, "epoch": None, "step": None, "val_auroc": None, "val_loss": None, "val_ce": None}


@dataclass
class RunState:
    step: int = 0
    wall_time_s: float = 0.0  # of earlier processes of this run (resumed runs)
    train_time_s: float = 0.0  # optimiser steps only (no validation, no noise-scale measurement)
    data_wait_s: float = 0.0  # of train_time_s: building the batch, or waiting for a loader worker
    patients: int = 0  # samples seen: the run's progress is patients / train patients (epochs)
    events: int = 0
    event_slots: float = 0.0  # event slots the set encoder and decoder processed
    sets: int = 0
    sequence_slots: int = 0  # slots of the [B, T_max] grids of the sequence transformer
    largest_batch: dict = field(default_factory=lambda: {"patients": 0, "events": 0, "sets": 0})
    loss_sum: float = 0.0  # patient-weighted training loss since the last validation
    loss_patients: int = 0
    epoch_loss_sum: float = 0.0
    epoch_patients: int = 0
    validations: int = 0
    noise_measurements: list = field(default_factory=list)
    best: dict = field(default_factory=_no_best)
    metrics_bytes: int = 0  # length of the working metrics.jsonl at this state
    skipped_batches: int = 0  # non-finite loss or gradient: skipped before the optimiser step
    budget_changes: list = field(default_factory=list)  # {"step", "epochs_from", "epochs_to"} of each change
    # the largest over every process (segment) of the run, not only the last one
    peaks: dict = field(
        default_factory=lambda: {"peak_rss_mb": 0.0, "cuda_max_allocated_mb": None, "cuda_max_reserved_mb": None}
    )

    def count_step(self, size: dict, loss: float, seconds: float, fill_ratio: float, sequence_slots: int) -> None:
        """Fold one optimiser step on a batch of `size` (patients, events, sets) in."""
        self.step += 1
        self.train_time_s += seconds
        self.patients += size["patients"]
        self.events += size["events"]
        self.event_slots += size["events"] / fill_ratio
        self.sets += size["sets"]
        self.sequence_slots += sequence_slots
        self.loss_sum += loss * size["patients"]
        self.loss_patients += size["patients"]
        self.epoch_loss_sum += loss * size["patients"]
        self.epoch_patients += size["patients"]
        for key, value in size.items():
            self.largest_batch[key] = max(self.largest_batch[key], value)

    def take_loss(self) -> float:
        """The mean training loss since the last call (validation points)."""
        loss = self.loss_sum / max(self.loss_patients, 1)
        self.loss_sum, self.loss_patients = 0.0, 0
        return loss

    def take_epoch_loss(self) -> float:
        loss = self.epoch_loss_sum / max(self.epoch_patients, 1)
        self.epoch_loss_sum, self.epoch_patients = 0.0, 0
        return loss

    def count_skipped(self, patients: int, terms: dict, limit: int, where: str) -> list[str]:
        """Count a skipped batch (its patients as seen); its non-finite terms, or a
        FloatingPointError past `limit` skipped batches."""
        self.skipped_batches += 1
        self.patients += patients
        bad = sorted(name for name, value in terms.items() if not math.isfinite(value))
        if self.skipped_batches > limit:
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} ({where}): {self.skipped_batches} batches skipped, more than "
                f"train.max_skipped_batches = {limit}"
            )
        return bad

    def update_peaks(self, device) -> None:
        """Fold this process's memory peaks into the run's (the maximum over segments)."""
        from seqsetvae.runtime.memory import cuda_peaks_mb, peak_rss_mb

        self.peaks["peak_rss_mb"] = max(self.peaks["peak_rss_mb"] or 0.0, peak_rss_mb())
        if device.type == "cuda":
            allocated, reserved = cuda_peaks_mb(device)
            self.peaks["cuda_max_allocated_mb"] = max(self.peaks["cuda_max_allocated_mb"] or 0.0, allocated)
            self.peaks["cuda_max_reserved_mb"] = max(self.peaks["cuda_max_reserved_mb"] or 0.0, reserved)

    def summary(self, wall_time_s: float, noise_patients: int) -> dict:
        """What metrics.json says of the run's progress (docs/outputs.md)."""
        seconds, measurements = self.train_time_s, self.noise_measurements
        return {
            "patients_per_s": self.patients / seconds,
            "events_per_s": self.events / seconds,
            "fill_ratio": self.events / self.event_slots,
            "sequence_fill_ratio": self.sets / self.sequence_slots,
            "wall_time_s": wall_time_s,
            "train_time_s": seconds,
            "data_wait_fraction": self.data_wait_s / seconds,
            "steps": self.step,
            "patients_seen": self.patients,
            "events_seen": self.events,
            "validations": self.validations,
            **self.peaks,
            "skipped_batches": self.skipped_batches,
            "budget_changes": self.budget_changes,
            "best": self.best,
            "best_val_auroc": self.best["val_auroc"],
            "largest_batch": self.largest_batch,
            "noise_scale": {
                "measurements": len(measurements),
                "patients": noise_patients,
                "gradient_sq": float(np.mean([m["gradient_sq"] for m in measurements])) if measurements else None,
                "trace_sigma": float(np.mean([m["trace_sigma"] for m in measurements])) if measurements else None,
                "b_simple": simple_noise_scale(measurements),
            },
        }

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, saved: dict) -> RunState:
        """From a checkpoint's counters; keys it lacks keep their fresh values."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in known})


def step_record(
    state: RunState, epoch: int, epochs: float, terms: dict, lr: float, weights, size: dict, seconds: float, batch
) -> dict:
    """metrics.jsonl's line of the step just counted into `state` (docs/outputs.md)."""
    return {
        "kind": "step",
        "epoch": epoch + 1,
        "step": state.step,
        "samples": state.patients,
        "epochs": epochs,
        **terms,
        "lr": lr,
        "beta": weights.beta,
        "recon_weight": weights.recon,
        "pred_weight": weights.pred,
        "patients_per_s": size["patients"] / seconds,
        "events_per_s": size["events"] / seconds,
        "fill_ratio": float(batch.fill_ratio),
        "sequence_fill_ratio": float(batch.sequence_fill_ratio),
        "batch_patients": size["patients"],
        "batch_events": size["events"],
        "batch_sets": size["sets"],
    }
