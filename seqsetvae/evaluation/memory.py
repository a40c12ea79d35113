"""`seqsetvae memory`: the memory report of one batch size.

Two views of the same jobs:
- in-process peaks the training and evaluation jobs measured themselves (peak RSS from
  getrusage; on CUDA, torch's peak allocated and reserved memory), and
- Snakemake's `benchmark:` records of those jobs (`max_rss` sampled from outside,
  wall time `s`), which can be missing (`-`, `NA`) for jobs shorter than the sampling
  interval.

Memory per patient is a peak divided by the batch size: it includes the process's fixed
cost (Python, torch, the model), which is why the report also shows the increment over
the smallest batch size.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from seqsetvae.errors import InputError
from seqsetvae.io import read_json, write_json, writer_of

MISSING_VALUES = ["-", "NA", "nan", "NaN", ""]


def read_benchmark(path: str | Path) -> dict:
    """Snakemake `benchmark:` TSV -> `{"max_rss_mb", "wall_s", "records"}`.

    Several rows (from `repeat()`) give the largest `max_rss` and the median wall time.
    Missing values (`-`, `NA`) give None, never an error.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=MISSING_VALUES, keep_default_na=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as error:
        raise InputError(f"{path}: not a Snakemake benchmark TSV ({error})") from None
    for column in ("s", "max_rss"):
        if column not in table.columns:
            raise InputError(f"{path}: benchmark TSV lacks column {column!r} (columns: {list(table.columns)})")
    wall = pd.to_numeric(table["s"], errors="coerce")
    max_rss = pd.to_numeric(table["max_rss"], errors="coerce")
    return {"max_rss_mb": _number(max_rss.max()), "wall_s": _number(wall.median()), "records": int(len(table))}


def memory_report(
    batch_size: int, train_summary: dict, eval_metrics: dict, train_benchmark: dict, eval_benchmark: dict
) -> dict:
    """The `results/memory/bs{B}.json` object from the jobs' own numbers."""

    def job(summary: dict, benchmark: dict) -> dict:
        keys = ("peak_rss_mb", "cuda_max_allocated_mb", "cuda_max_reserved_mb")
        peaks = {key: _number(summary.get(key)) for key in keys}
        per_patient = {f"{key}_per_patient": _divide(value, batch_size) for key, value in peaks.items()}
        return {**peaks, **per_patient, "benchmark": benchmark}

    return {
        "batch_size": batch_size,
        "device": train_summary.get("device"),
        "train": job(train_summary, train_benchmark),
        "eval": job(eval_metrics.get("memory", {}), eval_benchmark),
        "largest_batch": {"train": train_summary.get("largest_batch"), "eval": eval_metrics.get("largest_batch")},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae memory", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--train-summary", required=True, help="results/runs/bs{B}/metrics.json")
    parser.add_argument("--train-benchmark", required=True, help="Snakemake benchmark TSV of the training job")
    parser.add_argument("--eval-metrics", required=True, help="results/eval/bs{B}.json")
    parser.add_argument("--eval-benchmark", required=True, help="Snakemake benchmark TSV of the evaluation job")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    train_summary = _read_object(args.train_summary, ["batch_size", "peak_rss_mb", "largest_batch"])
    eval_metrics = _read_object(args.eval_metrics, ["batch_size", "memory"])
    for path, found in ((args.train_summary, train_summary), (args.eval_metrics, eval_metrics)):
        if found["batch_size"] != args.batch_size:
            raise InputError(f"{path}: batch_size is {found['batch_size']}, expected {args.batch_size} (--batch-size)")
    report = memory_report(
        args.batch_size,
        train_summary,
        eval_metrics,
        read_benchmark(args.train_benchmark),
        read_benchmark(args.eval_benchmark),
    )
    write_json(args.out, report)
    print(f"memory report for batch size {args.batch_size} -> {args.out}")
    return 0


def _read_object(path: str, required: list[str]) -> dict:
    obj = read_json(path, written_by=writer_of(path))
    missing = [key for key in required if key not in obj]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    return obj


def _number(value) -> float | None:
    """A finite float, or None for missing / NaN values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _divide(value: float | None, by: int) -> float | None:
    return None if value is None else value / by
