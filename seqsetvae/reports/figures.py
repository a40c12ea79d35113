"""The report's figures (matplotlib, Agg backend: no display needed), written as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

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


def throughput_memory(study: dict, claimed: pd.DataFrame, path: Path) -> None:
    """Training throughput (mean over seeds, min-max bars), relative speed and peak memory against batch size."""
    entries = study["batch_sizes"]
    sizes = sorted({e["batch_size"] for e in entries} | set(claimed.batch_size))
    b = np.array([e["batch_size"] for e in entries])
    speed = np.array([e["patients_per_s"]["mean"] for e in entries])
    low = speed - np.array([e["patients_per_s"]["min"] for e in entries])
    high = np.array([e["patients_per_s"]["max"] for e in entries]) - speed
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))

    ax = axes[0]
    ax.errorbar(b, speed, yerr=[low, high], fmt="o-", capsize=3, label="training (seed min-max)")
    eval_speed = [e["eval_patients_per_s"] for e in entries]
    if all(v is not None for v in eval_speed):
        ax.plot(b, eval_speed, "s--", label="inference (test split)")
    ax.set_ylabel("patients / s")
    ax.set_title("Throughput")
    _log2_axis(ax, sizes)
    ax.legend()

    ax = axes[1]
    ax.plot(b, [e["relative_speed"] for e in entries], "o-", label="measured (training)")
    ax.plot(claimed.batch_size, claimed.relative_speed, "x:", color="grey", label="original guide's claim")
    ax.axhline(1.0, color="black", lw=0.5)
    ax.set_ylabel(f"speed relative to batch size {study['reference_batch_size']}")
    ax.set_title("Relative training speed")
    _log2_axis(ax, sizes)
    ax.legend()

    ax = axes[2]
    ax.plot(b, [e["train_peak_memory_mb"] for e in entries], "o-", label="training, peak RSS")
    gpu = [e["train_peak_gpu_memory_mb"] for e in entries]
    if all(v is not None for v in gpu):
        ax.plot(b, gpu, "^-", label="training, GPU allocated")
    known = claimed.dropna(subset=["memory_gb"])
    ax.plot(known.batch_size, known.memory_gb * 1024, "x:", color="grey", label="original guide's claim")
    ax.set_yscale("log")  # the guide's GPU claims and a CPU run's RSS differ by orders of magnitude
    ax.set_ylabel("MiB (log scale)")
    ax.set_title("Peak memory")
    _log2_axis(ax, sizes)
    ax.legend(fontsize="small")

    fig.tight_layout()
    _save(fig, path)


def validation_curves(study: dict, path: Path) -> None:
    """Validation AUROC (seed mean, with the per-seed range) against samples seen and training time."""
    fig, (by_samples, by_time) = plt.subplots(1, 2, figsize=(12, 4))
    n_train = study["protocol"]["train_patients"] or 1
    for e in study["batch_sizes"]:
        curve = pd.DataFrame(e["validation_curve"])
        if curve.empty:
            continue
        label = f"batch size {e['batch_size']}"
        for ax, x in ((by_samples, curve["samples"] / n_train), (by_time, curve["train_seconds"])):
            (line,) = ax.plot(x, curve["val_auroc"], "-", label=label)
            ax.fill_between(x, curve["val_auroc_min"], curve["val_auroc_max"], color=line.get_color(), alpha=0.15)
    target = study["target"]["value"]
    for ax in (by_samples, by_time):
        if target is not None:
            ax.axhline(target, color="grey", ls=":", lw=1, label="target")
        ax.set_ylabel("validation AUROC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    by_samples.set_xlabel("epochs (samples seen / train patients)")
    by_samples.set_title("Validation AUROC against samples seen")
    by_time.set_xlabel("training seconds (optimiser steps only)")
    by_time.set_title("Validation AUROC against training time")
    fig.tight_layout()
    _save(fig, path)


def training_loss(steps: dict[tuple[int, int], pd.DataFrame], n_train: int | None, path: Path) -> None:
    """Training loss per step (moving average over about 2% of the run, log scale) against epochs."""
    fig, ax = plt.subplots(figsize=(7, 4))
    colors: dict[int, str] = {}
    for (batch_size, seed), frame in sorted(steps.items()):
        if frame.empty:
            continue
        x = frame["samples"] / n_train if n_train and "samples" in frame else frame["step"]
        window = max(1, len(frame) // 50)
        loss = frame["loss"].rolling(window, min_periods=1).mean()
        label = f"batch size {batch_size}" if batch_size not in colors else None
        (line,) = ax.plot(x, loss, lw=1, color=colors.get(batch_size), label=label)
        colors.setdefault(batch_size, line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("epochs" if n_train else "step")
    ax.set_ylabel("training loss (moving average, log scale)")
    ax.set_title("Training loss (one line per seed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def reliability(study: dict, path: Path) -> None:
    """Observed rate against mean predicted risk by decile of risk: each batch size's
    seed-mean probabilities and each baseline, beside the diagonal of perfect calibration."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    models = [(f"batch size {e['batch_size']}", e["calibration"]["reliability"], "o-") for e in study["batch_sizes"]]
    models += [(f"baseline: {b['name']}", b["calibration"]["reliability"], "s--") for b in study["baselines"]]
    for label, table, style in models:
        ax.plot([g["mean_predicted"] for g in table], [g["observed"] for g in table], style, ms=4, lw=1, label=label)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted risk (decile of risk)")
    ax.set_ylabel("observed rate")
    ax.set_title("Reliability on the test split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def lr_grid(study: dict, path: Path) -> None:
    """Seed-mean validation AUROC against the peak learning rate, one line per batch size,
    the chosen rate circled: the grid the report's runs were chosen from."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    grid = study.get("lr_grid") or {"batch_sizes": []}
    for entry in grid["batch_sizes"]:
        points = [
            (c["peak_lr"], c["val_auroc_mean"])
            for c in entry["candidates"]
            if c["peak_lr"] is not None and c["val_auroc_mean"] is not None
        ]
        if not points:
            continue
        line = ax.plot(*zip(*points), "o-", ms=4, lw=1, label=f"batch size {entry['batch_size']}")[0]
        chosen = [
            c for c in entry["candidates"] if c["multiplier"] == entry["chosen"] and c["val_auroc_mean"] is not None
        ]
        if chosen:
            ax.plot(chosen[0]["peak_lr"], chosen[0]["val_auroc_mean"], "o", ms=11, mfc="none", color=line.get_color())
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation AUROC (kept point, seed mean)")
    ax.set_title(f"Learning-rate grid over {grid.get('epochs')} epoch(s) (chosen: circled)")
    ax.grid(alpha=0.3, which="both")
    if grid["batch_sizes"]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)
