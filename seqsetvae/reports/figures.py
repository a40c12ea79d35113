"""The report's figures (matplotlib, Agg backend: no display needed), written as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from seqsetvae.io import atomic_path  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _log2_axis(ax, batch_sizes: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size (patients)")
    ax.grid(alpha=0.3)


def throughput_memory(rows: pd.DataFrame, claimed: pd.DataFrame, base: int, path: Path) -> None:
    """Training/inference throughput, speed relative to `base`, and peak memory against batch size.

    `rows`: one row per batch size with columns batch_size, train_patients_per_s,
    eval_patients_per_s, relative_speed, train_peak_rss_mb, eval_peak_rss_mb,
    train_cuda_max_allocated_mb. `claimed`: the original guide's table.
    """
    sizes = sorted(set(rows.batch_size) | set(claimed.batch_size))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))

    ax = axes[0]
    ax.plot(rows.batch_size, rows.train_patients_per_s, "o-", label="training")
    ax.plot(rows.batch_size, rows.eval_patients_per_s, "s--", label="inference (test split)")
    ax.set_ylabel("patients / s")
    ax.set_title("Throughput")
    _log2_axis(ax, sizes)
    ax.legend()

    ax = axes[1]
    ax.plot(rows.batch_size, rows.relative_speed, "o-", label="measured (training)")
    ax.plot(claimed.batch_size, claimed.relative_speed, "x:", color="grey", label="original guide's claim")
    ax.axhline(1.0, color="black", lw=0.5)
    ax.set_ylabel(f"speed relative to batch size {base}")
    ax.set_title("Relative training speed")
    _log2_axis(ax, sizes)
    ax.legend()

    ax = axes[2]
    ax.plot(rows.batch_size, rows.train_peak_rss_mb, "o-", label="training, peak RSS")
    ax.plot(rows.batch_size, rows.eval_peak_rss_mb, "s--", label="evaluation, peak RSS")
    if rows.train_cuda_max_allocated_mb.notna().any():
        ax.plot(rows.batch_size, rows.train_cuda_max_allocated_mb, "^-", label="training, GPU allocated")
    known = claimed.dropna(subset=["memory_gb"])
    ax.plot(known.batch_size, known.memory_gb * 1024, "x:", color="grey", label="original guide's claim")
    ax.set_yscale("log")  # the guide's GPU claims and a CPU run's RSS differ by orders of magnitude
    ax.set_ylabel("MiB (log scale)")
    ax.set_title("Peak memory")
    _log2_axis(ax, sizes)
    ax.legend(fontsize="small")

    fig.tight_layout()
    _save(fig, path)


def training_curves(curves: dict[int, tuple[pd.DataFrame, pd.DataFrame]], path: Path) -> None:
    """Training loss (moving average) and validation AUROC per batch size.

    `curves[b] = (steps, epochs)`: the step and epoch records of metrics.jsonl. The x
    axis is epochs elapsed, so batch sizes with very different step counts line up.
    """
    fig, (loss_ax, auroc_ax) = plt.subplots(1, 2, figsize=(12, 4))
    for batch_size, (steps, epochs) in sorted(curves.items()):
        if len(steps):
            x = epochs_elapsed(steps["step"].to_numpy(), epochs["step"].to_numpy())
            window = max(1, len(steps) // 50)
            loss = steps["loss"].rolling(window, min_periods=1).mean()
            loss_ax.plot(x, loss, label=f"batch size {batch_size}")
        if len(epochs):
            auroc_ax.plot(epochs["epoch"], epochs["val_auroc"], "o-", label=f"batch size {batch_size}")
    loss_ax.set_xlabel("epochs")
    loss_ax.set_ylabel("training loss (moving average)")
    loss_ax.set_title("Training loss")
    auroc_ax.set_xlabel("epoch")
    auroc_ax.set_ylabel("validation AUROC")
    auroc_ax.set_title("Validation AUROC")
    auroc_ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in (loss_ax, auroc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def epochs_elapsed(steps: np.ndarray, epoch_end_steps: np.ndarray) -> np.ndarray:
    """Step numbers as fractional epochs, from the step count at each epoch's end."""
    if len(epoch_end_steps) == 0:
        return steps.astype(np.float64)
    ends = np.concatenate([[0], np.sort(epoch_end_steps)]).astype(np.float64)
    return np.interp(steps, ends, np.arange(len(ends)), right=np.nan)


def roc_curves(predictions: dict[int, pd.DataFrame], aurocs: dict[int, float | None], path: Path) -> None:
    """Test-split ROC curve of each batch size's best checkpoint."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for batch_size, frame in sorted(predictions.items()):
        if frame["label"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(frame["label"], frame["probability"])
        auroc = aurocs.get(batch_size)
        label = f"batch size {batch_size}" + (f" (AUROC {auroc:.3f})" if auroc is not None else "")
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, test split")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)
