"""`seqsetvae report`: reports/batch_comparison.md, what batch size buys, measured.

Reads, for every batch size B, the pipeline's outputs under `--results`:
`runs/bs{B}/metrics.json` and `metrics.jsonl` (training), `eval/bs{B}.json` and
`eval/bs{B}_predictions.parquet` (test split), `memory/bs{B}.json`; plus `qc.json` and
`shards/index.json` for the dataset's size. Writes the Markdown report and its figures
(`figures/*.png` beside it). Every number in the report comes from those files; the
only hand-written numbers are the original guide's claims, quoted as such.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path, read_json

# The original guide's batch-size table (MODEL.md), published without a measurement.
CLAIMED = pd.DataFrame(
    {
        "batch_size": [1, 4, 8, 16],
        "relative_speed": [1.0, 2.5, 4.0, 6.0],
        "memory_gb": [2.5, 6.0, 12.0, None],
    }
)
FIGURES = {
    "throughput_memory": "throughput_memory.png",
    "training_curves": "training_curves.png",
    "roc_curves": "roc_curves.png",
}
MISSING = "–"  # an en dash marks a value the run did not produce (e.g. GPU memory on CPU)


@dataclass
class Run:
    """Everything the pipeline wrote about one batch size."""

    batch_size: int
    train: dict
    steps: pd.DataFrame
    epochs: pd.DataFrame
    eval: dict
    predictions: pd.DataFrame
    memory: dict


# -- reading --------------------------------------------------------------------------


def _read_json(path: Path, required: tuple[str, ...] = ()) -> dict:
    if not path.exists():
        raise InputError(f"{path}: missing (run the stage that writes it first)")
    try:
        obj = read_json(path)
    except ValueError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    missing = [key for key in required if key not in obj]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    return obj


def _read_metrics_log(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """metrics.jsonl -> (step records, epoch records), each sorted by step."""
    if not path.exists():
        raise InputError(f"{path}: missing (run the stage that writes it first)")
    try:
        records = pd.read_json(path, lines=True) if path.stat().st_size else pd.DataFrame()
    except ValueError as error:
        raise InputError(f"{path}: not JSON lines ({error})") from None
    if len(records) and "kind" not in records.columns:
        raise InputError(f"{path}: records lack the 'kind' field")

    def kind(name: str, columns: list[str]) -> pd.DataFrame:
        part = records[records["kind"] == name] if len(records) else pd.DataFrame(columns=columns)
        missing = [c for c in columns if c not in part.columns]
        if missing:
            raise InputError(f"{path}: {name!r} records lack field(s) {', '.join(missing)}")
        return part.sort_values("step").reset_index(drop=True)

    return kind("step", ["step", "loss"]), kind("epoch", ["epoch", "step", "val_auroc"])


def load_runs(results: Path, batch_sizes: list[int]) -> list[Run]:
    runs = []
    for b in sorted(batch_sizes):
        run_dir = results / "runs" / f"bs{b}"
        train = _read_json(
            run_dir / "metrics.json",
            ("batch_size", "patients_per_s", "events_per_s", "fill_ratio", "wall_time_s", "epochs", "peak_rss_mb"),
        )
        steps, epochs = _read_metrics_log(run_dir / "metrics.jsonl")
        evaluation = _read_json(
            results / "eval" / f"bs{b}.json",
            ("batch_size", "auroc", "auroc_ci", "auprc", "auprc_ci", "brier", "recon", "kl", "active_units"),
        )
        prediction_path = results / "eval" / f"bs{b}_predictions.parquet"
        if not prediction_path.exists():
            raise InputError(f"{prediction_path}: missing (run `seqsetvae evaluate` first)")
        predictions = pd.read_parquet(prediction_path)
        memory = _read_json(results / "memory" / f"bs{b}.json", ("batch_size", "train", "eval"))
        for path, found in ((run_dir / "metrics.json", train), (results / "eval" / f"bs{b}.json", evaluation)):
            if found["batch_size"] != b:
                raise InputError(f"{path}: batch_size is {found['batch_size']}, expected {b}")
        runs.append(Run(b, train, steps, epochs, evaluation, predictions, memory))
    return runs


# -- tables ---------------------------------------------------------------------------


def comparison_frame(runs: list[Run]) -> tuple[pd.DataFrame, int]:
    """One row per batch size with every number of the report, and the speed baseline."""
    base = 1 if any(r.batch_size == 1 for r in runs) else min(r.batch_size for r in runs)
    rows = []
    for r in runs:
        rows.append(
            {
                "batch_size": r.batch_size,
                "train_patients_per_s": r.train["patients_per_s"],
                "train_events_per_s": r.train["events_per_s"],
                "fill_ratio": r.train["fill_ratio"],
                "wall_time_s": r.train["wall_time_s"],
                "epochs": r.train["epochs"],
                "steps": r.train.get("steps"),
                "eval_patients_per_s": r.eval.get("inference", {}).get("patients_per_s"),
                "train_peak_rss_mb": r.memory["train"].get("peak_rss_mb"),
                "train_peak_rss_mb_per_patient": r.memory["train"].get("peak_rss_mb_per_patient"),
                "train_cuda_max_allocated_mb": r.memory["train"].get("cuda_max_allocated_mb"),
                "train_cuda_max_reserved_mb": r.memory["train"].get("cuda_max_reserved_mb"),
                "train_benchmark_max_rss_mb": (r.memory["train"].get("benchmark") or {}).get("max_rss_mb"),
                "eval_peak_rss_mb": r.memory["eval"].get("peak_rss_mb"),
                "eval_cuda_max_allocated_mb": r.memory["eval"].get("cuda_max_allocated_mb"),
                "largest_batch": (r.memory.get("largest_batch") or {}).get("train") or r.train.get("largest_batch"),
                "auroc": r.eval["auroc"],
                "auroc_ci": r.eval["auroc_ci"],
                "auprc": r.eval["auprc"],
                "auprc_ci": r.eval["auprc_ci"],
                "accuracy": r.eval.get("accuracy"),
                "brier": r.eval["brier"],
                "recon": r.eval["recon"],
                "kl": r.eval["kl"],
                "active_units": r.eval["active_units"]["active"],
                "latent_units": r.eval["active_units"]["units"],
            }
        )
    frame = pd.DataFrame(rows).astype({"train_cuda_max_allocated_mb": float, "eval_patients_per_s": float})
    base_row = frame.loc[frame.batch_size == base].iloc[0]
    frame["relative_speed"] = frame.train_patients_per_s / base_row.train_patients_per_s
    # memory a batch size costs beyond the baseline's peak (the fixed process cost cancels)
    frame["train_rss_increment_mb"] = frame.train_peak_rss_mb - base_row.train_peak_rss_mb
    frame["train_gpu_increment_mb"] = frame.train_cuda_max_allocated_mb - base_row.train_cuda_max_allocated_mb
    return frame, base


def fmt(value, digits: int = 3) -> str:
    """A number with `digits` decimals, or the missing-value mark."""
    if value is None or (isinstance(value, float) and value != value):
        return MISSING
    return f"{value:.{digits}f}"


def fmt_ci(ci) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return MISSING
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def speed_table(frame: pd.DataFrame) -> str:
    header = ["batch size", "patients/s", "events/s", "relative speed", "event-slot fill", "wall time (s)", "epochs", "steps"]
    rows = [
        [
            str(r.batch_size),
            fmt(r.train_patients_per_s, 2),
            fmt(r.train_events_per_s, 1),
            fmt(r.relative_speed, 2) + "x",
            fmt(r.fill_ratio, 3),
            fmt(r.wall_time_s, 1),
            str(r.epochs),
            str(r.steps) if r.steps is not None else MISSING,
        ]
        for r in frame.itertuples()
    ]
    return markdown_table(header, rows)


def memory_table(frame: pd.DataFrame, base: int, cuda: bool) -> str:
    header = [
        "batch size",
        "train peak RSS (MiB)",
        f"increment over batch size {base} (MiB)",
        "per patient (MiB)",
        "Snakemake max_rss (MiB)",
        "eval peak RSS (MiB)",
    ]
    if cuda:
        header += [
            "train GPU allocated (MiB)",
            f"GPU increment over batch size {base} (MiB)",
            "train GPU reserved (MiB)",
            "eval GPU allocated (MiB)",
        ]
    header += ["largest batch: patients / sets / events"]
    rows = []
    for r in frame.itertuples():
        row = [
            str(r.batch_size),
            fmt(r.train_peak_rss_mb, 1),
            fmt(r.train_rss_increment_mb, 1),
            fmt(r.train_peak_rss_mb_per_patient, 1),
            fmt(r.train_benchmark_max_rss_mb, 1),
            fmt(r.eval_peak_rss_mb, 1),
        ]
        if cuda:
            row += [
                fmt(r.train_cuda_max_allocated_mb, 1),
                fmt(r.train_gpu_increment_mb, 1),
                fmt(r.train_cuda_max_reserved_mb, 1),
                fmt(r.eval_cuda_max_allocated_mb, 1),
            ]
        largest = r.largest_batch or {}
        row.append(" / ".join(str(largest.get(k, MISSING)) for k in ("patients", "sets", "events")))
        rows.append(row)
    return markdown_table(header, rows)


def quality_table(frame: pd.DataFrame) -> str:
    header = ["batch size", "AUROC", "AUROC 95% CI", "AUPRC", "AUPRC 95% CI", "accuracy", "Brier"]
    header += ["reconstruction", "KL", "active units"]
    rows = [
        [
            str(r.batch_size),
            fmt(r.auroc),
            fmt_ci(r.auroc_ci),
            fmt(r.auprc),
            fmt_ci(r.auprc_ci),
            fmt(r.accuracy),
            fmt(r.brier, 4),
            fmt(r.recon, 4),
            fmt(r.kl, 4),
            f"{r.active_units} / {r.latent_units}",
        ]
        for r in frame.itertuples()
    ]
    return markdown_table(header, rows)


def headline_memory(frame: pd.DataFrame) -> tuple[str, str]:
    """(column, label) of the memory that limits the batch size: GPU allocated on CUDA, else RSS."""
    if frame.train_cuda_max_allocated_mb.notna().all():
        return "train_cuda_max_allocated_mb", "GPU allocated"
    return "train_peak_rss_mb", "RSS"


def claim_table(frame: pd.DataFrame, base: int) -> str:
    measured = frame.set_index("batch_size")
    column, label = headline_memory(frame)
    header = ["batch size", "claimed relative speed", f"measured relative speed (vs {base})"]
    header += ["claimed memory (GB)", f"measured training peak, {label} (GiB)"]
    rows = []
    for c in CLAIMED.itertuples():
        m = measured.loc[c.batch_size] if c.batch_size in measured.index else None
        rows.append(
            [
                str(c.batch_size),
                fmt(c.relative_speed, 1) + "x",
                (fmt(m.relative_speed, 2) + "x") if m is not None else "not run",
                fmt(c.memory_gb, 1) if c.memory_gb == c.memory_gb else "-",
                fmt(m[column] / 1024, 2) if m is not None else "not run",
            ]
        )
    return markdown_table(header, rows)


# -- summary --------------------------------------------------------------------------


def _overlap(a, b) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def summary_sentences(frame: pd.DataFrame, base: int, device: str) -> list[str]:
    """Plain-language findings, generated from the numbers."""
    sentences = []
    fastest = frame.loc[frame.train_patients_per_s.idxmax()]
    if len(frame) == 1:
        sentences.append(
            f"Only batch size {fastest.batch_size} was run: {fastest.train_patients_per_s:.2f} patients/s in training."
        )
    else:
        claim = CLAIMED.set_index("batch_size").relative_speed.get(int(fastest.batch_size))
        claim_text = f" (the original guide claimed {claim:.1f}x)" if claim is not None and base == 1 else ""
        sentences.append(
            f"Fastest training: batch size {fastest.batch_size} at {fastest.train_patients_per_s:.2f} patients/s, "
            f"{fastest.relative_speed:.2f}x batch size {base}{claim_text}."
        )
        largest = frame.loc[frame.batch_size.idxmax()]
        if largest.batch_size != fastest.batch_size:
            sentences.append(
                f"The largest batch size, {largest.batch_size}, reaches {largest.relative_speed:.2f}x: "
                f"beyond batch size {fastest.batch_size}, larger batches did not train faster in this run "
                f"(device: {device})."
            )
        smallest = frame.loc[frame.batch_size.idxmin()]
        column, label = headline_memory(frame)
        sentences.append(
            f"Peak training memory ({label}) goes from {smallest[column]:.0f} MiB at batch size {smallest.batch_size} "
            f"to {largest[column]:.0f} MiB at batch size {largest.batch_size}."
        )
    for metric, label in (("auroc", "AUROC"), ("auprc", "AUPRC")):
        cis = dict(zip(frame.batch_size, frame[f"{metric}_ci"]))
        ci = {b: interval for b, interval in cis.items() if _complete(interval)}
        value = dict(zip(frame.batch_size, frame[metric]))
        separated = [
            (a, b)
            for i, a in enumerate(sorted(ci))
            for b in sorted(ci)[i + 1 :]
            if not _overlap(ci[a], ci[b])
        ]
        if len(ci) < 2:
            continue
        if not separated:
            sentences.append(
                f"Test {label}: the 95% confidence intervals of all batch sizes overlap, so this test set does not "
                f"distinguish their quality."
            )
        for a, b in separated:
            better, worse = (a, b) if value[a] > value[b] else (b, a)
            sentences.append(
                f"Test {label} of batch size {better} ({value[better]:.3f}, CI {fmt_ci(ci[better])}) is higher than "
                f"that of batch size {worse} ({value[worse]:.3f}, CI {fmt_ci(ci[worse])}); the CIs do not overlap."
            )
    chance = [str(r.batch_size) for r in frame.itertuples() if _complete(r.auroc_ci) and r.auroc_ci[0] <= 0.5]
    if chance:
        sentences.append(f"The AUROC CI includes 0.5 (chance) for batch size(s) {', '.join(chance)}.")
    return sentences


def _complete(ci) -> bool:
    return bool(ci) and ci[0] is not None and ci[1] is not None


# -- environment ----------------------------------------------------------------------


def git_commit() -> str:
    """The project's git commit (with a mark for uncommitted changes), or "unknown"."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def settings_digest(settings: dict) -> str:
    """sha256 of the settings JSON in canonical form (sorted keys, no spaces)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dataset_lines(results: Path) -> list[str]:
    """Patients, sets and events per split (qc.json, else the shards' index), rows kept."""
    qc = _read_json(results / "qc.json")
    index_path = results / "shards" / "index.json"
    index = _read_json(index_path) if index_path.exists() else {}
    by_split = qc.get("by_split") or {}
    if not by_split:
        by_split = {
            name: {"patients": s.get("n_patients"), "events": s.get("n_events"), "sets": s.get("n_sets")}
            for name, s in (index.get("splits") or {}).items()
        }
    if not by_split:
        raise InputError(f"{results / 'qc.json'}: no 'by_split' counts (and none in shards/index.json)")
    lines = []
    if "rows_in" in qc and "rows_kept" in qc:
        dropped = sum((qc.get("rows_dropped") or {}).values())
        lines.append(f"  - event rows: {qc['rows_in']} read, {qc['rows_kept']} kept, {dropped} dropped (reasons in qc.json)")
    if "vocab_size" in index:
        lines.append(f"  - variables (train vocabulary): {index['vocab_size']}")
    for split in ("train", "valid", "test"):
        counts = by_split.get(split, {})
        lines.append(
            f"  - {split}: {counts.get('patients', MISSING)} patients, {counts.get('sets', MISSING)} sets, "
            f"{counts.get('events', MISSING)} events"
        )
    return lines


def _unique(values) -> str:
    found = sorted({str(v) for v in values if v is not None})
    return ", ".join(found) if found else "unknown"


def environment_lines(runs: list[Run], settings: dict, results: Path) -> list[str]:
    threads = _unique(r.train.get("threads") for r in runs)
    evaluate = settings.get("evaluate", {})
    return [
        f"- device: {_unique(r.train.get('device') for r in runs)}; CPU threads: {threads}; "
        f"precision: {_unique(r.train.get('precision') for r in runs)}",
        f"- torch: {_unique(r.train.get('torch_version') for r in runs)}",
        f"- project commit: {git_commit()}",
        f"- settings digest (sha256 of the settings JSON): `{settings_digest(settings)}`",
        f"- evaluation: best-validation-AUROC checkpoint on the test split; bootstrap "
        f"{evaluate.get('bootstrap_resamples', MISSING)} resamples, seed {evaluate.get('seed', MISSING)}, percentile 95% CIs",
        "- dataset (after QC and truncation):",
        *dataset_lines(results),
    ]


# -- the report -----------------------------------------------------------------------


def write_figures(runs: list[Run], frame: pd.DataFrame, base: int, figures_dir: Path) -> None:
    from seqsetvae.reports import figures

    figures.throughput_memory(frame, CLAIMED, base, figures_dir / FIGURES["throughput_memory"])
    figures.training_curves({r.batch_size: (r.steps, r.epochs) for r in runs}, figures_dir / FIGURES["training_curves"])
    figures.roc_curves(
        {r.batch_size: r.predictions for r in runs},
        {r.batch_size: r.eval["auroc"] for r in runs},
        figures_dir / FIGURES["roc_curves"],
    )


def render(runs: list[Run], frame: pd.DataFrame, base: int, settings: dict, results: Path, figures_rel: str) -> str:
    device = _unique(r.train.get("device") for r in runs)
    cuda = frame.train_cuda_max_allocated_mb.notna().any()
    base_note = (
        "Relative speed is training patients/s divided by that of batch size 1."
        if base == 1
        else f"Batch size 1 was not run: relative speed is against the smallest batch size, {base}."
    )
    parts = [
        "# Batch size comparison",
        "",
        "Generated by `seqsetvae report` from the pipeline's outputs; every number is read from "
        "`results/` (training summaries, test-split evaluations, memory reports). "
        "See README.md, \"Reading the report\", for the definitions.",
        "",
        "## Summary",
        "",
        *[f"- {s}" for s in summary_sentences(frame, base, device)],
        "",
        "## Training speed",
        "",
        base_note + " Throughput counts training steps only (validation excluded).",
        "",
        speed_table(frame),
        "",
        "## Memory",
        "",
        "Peak RSS includes the process's fixed cost (Python, torch, the model); the increment "
        f"over batch size {base} is what the larger batches add.",
        "",
        memory_table(frame, base, cuda),
        "",
        "## Test-set quality",
        "",
        "Best checkpoint (by validation AUROC) of each run, on the test split. Reconstruction and KL "
        "are means per set (KL: the posterior's KL to the prior, before free bits and the beta weight); active units: latent units whose posterior "
        "mean varies across test sets with variance above the threshold in the evaluation JSON.",
        "",
        quality_table(frame),
        "",
        "## The original guide's claim",
        "",
        "The original guide published this table without a measurement (memory presumably on a GPU). "
        "Measured values from this run beside it:",
        "",
        claim_table(frame, base),
        "",
        "## Figures",
        "",
        f"![Throughput, relative speed and memory against batch size]({figures_rel}/{FIGURES['throughput_memory']})",
        "",
        f"![Training loss and validation AUROC per batch size]({figures_rel}/{FIGURES['training_curves']})",
        "",
        f"![Test-split ROC curves per batch size]({figures_rel}/{FIGURES['roc_curves']})",
        "",
        "## Environment",
        "",
        *environment_lines(runs, settings, results),
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae report", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="{}", help="config sections (JSON); hashed into the report")
    parser.add_argument("--results", required=True, help="the pipeline's results folder")
    parser.add_argument("--batch-sizes", type=int, nargs="+", required=True)
    parser.add_argument("--out", required=True, help="the Markdown report; figures go to figures/ beside it")
    args = parser.parse_args(argv)

    try:
        settings = json.loads(args.settings)
    except ValueError as error:
        raise InputError(f"--settings: not valid JSON ({error})") from None
    results, out = Path(args.results), Path(args.out)
    runs = load_runs(results, args.batch_sizes)
    frame, base = comparison_frame(runs)
    figures_dir = out.parent / "figures"
    write_figures(runs, frame, base, figures_dir)
    text = render(runs, frame, base, settings, results, "figures")
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    print(f"report for batch sizes {sorted(args.batch_sizes)} -> {out}")
    return 0
