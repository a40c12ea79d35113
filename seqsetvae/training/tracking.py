"""Runs you can watch while they train: the records of metrics.jsonl, also written as
TensorBoard event files or to an MLflow file store under the run directory.

`train.tracking`: `none` (default), `tensorboard` (`<run>/tensorboard/`, needs the
`tensorboard` package: `pip install -e '.[tracking]'`; view with `tensorboard --logdir
results/runs`), or `mlflow` (`<run>/mlruns/`, needs `mlflow-skinny`; view with `mlflow ui
--backend-store-uri results/runs/bs16/lr1/seed0/mlruns`, with MLFLOW_ALLOW_FILE_STORE=true
for MLflow 3). No server is needed for either.

Every number comes from the same record the trainer writes to metrics.jsonl, at that
record's optimiser step; only rank 0 writes. After a resume, records from the resumed
step on replace the ones an interrupted process wrote (TensorBoard's purge_step; MLflow
keeps every value it is given, so a redone step shows twice there).
"""

from __future__ import annotations

import os
from pathlib import Path

from seqsetvae.errors import InputError

# which fields of each metrics.jsonl record kind become a tracked scalar, and its name
TRACKED = {
    "step": ("loss", "recon", "kl", "ce", "grad_norm", "lr", "beta", "patients_per_s", "events_per_s"),
    "validation": ("val_loss", "val_auroc", "val_auprc", "train_loss"),
    "epoch": ("train_loss",),
    "noise_scale": ("gradient_sq", "trace_sigma"),
}


def scalars(record: dict) -> dict[str, float]:
    """The tracked scalars of one metrics.jsonl record: `{"<kind>/<field>": value}`."""
    kind = record.get("kind")
    return {f"{kind}/{name}": float(record[name]) for name in TRACKED.get(kind, ()) if record.get(name) is not None}


class Tracker:
    """Receives every record of a run (rank 0) and writes its scalars to the backend."""

    def __init__(self, backend: str, run_dir: Path, run_name: str, first_step: int, params: dict) -> None:
        self.backend = backend
        if backend == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError(
                    "train.tracking: tensorboard needs the tensorboard package: pip install -e '.[tracking]'"
                ) from None
            # records of steps from `first_step` on, left by an interrupted process, are dropped
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_step or None)
        elif backend == "mlflow":
            try:
                import mlflow
            except ImportError:
                raise InputError("train.tracking: mlflow needs mlflow-skinny: pip install -e '.[tracking]'") from None
            self.mlflow = mlflow
            # a file store beside the run, no server or database: MLflow 3 asks for this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
            mlflow.set_experiment("seqsetvae")
            runs = mlflow.search_runs(filter_string=f"tags.mlflow.runName = '{run_name}'", output_format="list")
            self.run = mlflow.start_run(run_id=runs[0].info.run_id) if runs else mlflow.start_run(run_name=run_name)
            if not runs:
                mlflow.log_params(params)
        else:
            raise InputError(f"train.tracking: unknown backend {backend!r} (none, tensorboard, mlflow)")

    def log(self, record: dict) -> None:
        values = scalars(record)
        if not values:
            return
        step = int(record["step"])
        if self.backend == "tensorboard":
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
        else:
            self.mlflow.log_metrics(values, step=step)

    def flush(self) -> None:
        if self.backend == "tensorboard":
            self.writer.flush()

    def close(self) -> None:
        if self.backend == "tensorboard":
            self.writer.close()
        else:
            self.mlflow.end_run()
