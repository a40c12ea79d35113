"""The batch-size study as data: `reports/batch_comparison.json`, built from the runs' files.

Everything the Markdown report says is computed here and nowhere else (the renderer only
formats it). Per batch size: speed and memory over its seeds, test AUROC/AUPRC per seed
and their seed mean, paired bootstrap differences against the reference batch size and
against the best baseline (Holm-adjusted within each family), the mean validation curve
and the time to a target validation AUROC, and the gradient noise scale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from seqsetvae.errors import DamagedFile, InputError
from seqsetvae.evaluation import paired
from seqsetvae.evaluation.calibration import reliability_table
from seqsetvae.evaluation.metrics import bootstrap_unit, clusters_of
from seqsetvae.io import read_json, read_parquet, writer_of
from seqsetvae.training.lr_grid import multiplier_tag
from seqsetvae.training.noise_scale import simple_noise_scale

SIGNIFICANCE = 0.05
CALIBRATION = ("ece", "calibration_slope", "calibration_intercept")  # seqsetvae.evaluation.paired.METRICS


@dataclass
class Run:
    """Everything the pipeline wrote about one (batch size, seed)."""

    batch_size: int
    seed: int
    train: dict
    steps: pd.DataFrame
    validations: pd.DataFrame
    noise: pd.DataFrame
    eval: dict
    predictions: pd.DataFrame  # patient_id, label, probability (sorted by patient_id)
    memory: dict


# -- reading --------------------------------------------------------------------------


def read_object(path: Path, required: tuple[str, ...] = ()) -> dict:
    if not path.exists():
        raise InputError(f"{path}: missing (run the stage that writes it first)")
    obj = read_json(path, written_by=writer_of(path))
    missing = [key for key in required if key not in obj]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    return obj


def read_metrics_log(path: Path) -> dict[str, pd.DataFrame]:
    """metrics.jsonl -> {kind: records sorted by step} for step, validation and noise_scale."""
    if not path.exists():
        raise InputError(f"{path}: missing (run the stage that writes it first)")
    try:
        records = pd.read_json(path, lines=True) if path.stat().st_size else pd.DataFrame()
    except ValueError as error:
        raise DamagedFile(path, f"not JSON lines: {error}", writer_of(path)) from None
    if len(records) and "kind" not in records.columns:
        raise InputError(f"{path}: records lack the 'kind' field")
    required = {
        "step": ["step", "loss"],
        "validation": ["step", "samples", "val_auroc", "train_time_s", "wall_time_s"],
        "noise_scale": ["step", "gradient_sq", "trace_sigma"],
    }
    out = {}
    for kind, columns in required.items():
        part = records[records["kind"] == kind] if len(records) else pd.DataFrame(columns=columns)
        if kind == "noise_scale" and part.empty:
            part = pd.DataFrame(columns=columns)
        missing = [c for c in columns if c not in part.columns]
        if missing:
            raise InputError(f"{path}: {kind!r} records lack field(s) {', '.join(missing)}")
        out[kind] = part.sort_values("step").reset_index(drop=True)
    return out


def read_predictions(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputError(f"{path}: missing (run the stage that writes it first)")
    frame = read_parquet(path, writer_of(path)).to_pandas()
    missing = {"patient_id", "label", "probability"} - set(frame.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return frame.sort_values("patient_id").reset_index(drop=True)


RUN_NAME = re.compile(r"bs(?P<batch_size>\d+)/lr(?P<lr>[0-9.]+(?:e-?[0-9]+)?)/seed(?P<seed>\d+)")


def load_runs(results: Path, names: list[str]) -> list[Run]:
    """The compared runs `bsB/lrM/seedS` (one rate per batch size), sorted by batch size and seed."""
    parsed = []
    for name in names:
        match = RUN_NAME.fullmatch(name)
        if match is None:
            raise InputError(f"run {name!r}: not of the form bsB/lrM/seedS")
        parsed.append((int(match["batch_size"]), int(match["seed"]), match["lr"], name))
    rates: dict[int, set] = {}
    for b, _, lr, _ in parsed:
        rates.setdefault(b, set()).add(lr)
    for b, tags in rates.items():
        if len(tags) > 1:
            raise InputError(
                f"batch size {b}: runs at more than one learning rate ({', '.join(sorted(tags))}); compare one"
            )
    runs = []
    for b, s, _, name in sorted(parsed):
        train = read_object(
            results / "runs" / name / "metrics.json", ("batch_size", "seed", "patients_per_s", "peak_rss_mb")
        )
        log = read_metrics_log(results / "runs" / name / "metrics.jsonl")
        evaluation = read_object(
            results / "eval" / f"{name}.json", ("batch_size", "auroc", "auroc_ci", "auprc", "auprc_ci")
        )
        memory = read_object(results / "memory" / f"{name}.json", ("batch_size", "train", "eval"))
        for path, found in (
            (results / "runs" / name / "metrics.json", train),
            (results / "eval" / f"{name}.json", evaluation),
        ):
            if found["batch_size"] != b or found.get("seed", s) != s:
                raise InputError(
                    f"{path}: batch size {found['batch_size']}, seed {found.get('seed')}; expected {b}, {s}"
                )
        predictions = read_predictions(results / "eval" / f"{name}_predictions.parquet")
        runs.append(
            Run(b, s, train, log["step"], log["validation"], log["noise_scale"], evaluation, predictions, memory)
        )
    return runs


def load_lr_grid(paths: list[Path], runs: list[Run]) -> list[dict]:
    """The learning-rate choice of every compared batch size (`lr_grid/bsB.json`), checked
    against the rate its runs trained at."""
    choices = {}
    for path in paths:
        choice = read_object(path, ("batch_size", "candidates", "chosen", "edge"))
        choices[int(choice["batch_size"])] = choice
    for run in runs:
        choice = choices.get(run.batch_size)
        if choice is None:
            raise InputError(f"batch size {run.batch_size}: no learning-rate choice among {', '.join(map(str, paths))}")
        trained = float(run.train.get("lr_multiplier", 1.0))
        if multiplier_tag(trained) != choice["chosen"]["tag"]:
            raise InputError(
                f"bs{run.batch_size}/seed{run.seed} trained at multiplier {trained:g}, but "
                f"lr_grid/bs{run.batch_size}.json chose {choice['chosen']['tag']}"
            )
    return [choices[b] for b in sorted({r.batch_size for r in runs})]


def load_baselines(results: Path, names: list[str]) -> list[dict]:
    baselines = []
    for name in names:
        summary = read_object(
            results / "baselines" / f"{name}.json", ("name", "auroc", "auroc_ci", "auprc", "auprc_ci")
        )
        predictions = read_predictions(results / "baselines" / f"{name}_predictions.parquet")
        baselines.append({**summary, "frame": predictions})
    return baselines


# -- pieces of the study --------------------------------------------------------------


def aligned_scores(runs: list[Run], baselines: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """(labels [n], {group: scores [seeds, n]}, patient ids): every model on the same patients."""
    frames = [(f"bs{r.batch_size}/seed{r.seed}", r.predictions) for r in runs]
    frames += [(f"baseline {b['name']}", b["frame"]) for b in baselines]
    first_name, first = frames[0]
    for name, frame in frames[1:]:
        if not (len(frame) == len(first) and (frame["patient_id"].to_numpy() == first["patient_id"].to_numpy()).all()):
            raise InputError(f"the test predictions of {name} and {first_name} are not of the same patients")
        if not (frame["label"].to_numpy() == first["label"].to_numpy()).all():
            raise InputError(f"the test labels of {name} and {first_name} differ")
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(f"bs{r.batch_size}", []).append(r.predictions["probability"].to_numpy())
    for b in baselines:
        groups[b["name"]] = [b["frame"]["probability"].to_numpy()]
    return (
        first["label"].to_numpy().astype(np.int64),
        {k: np.vstack(v) for k, v in groups.items()},
        first["patient_id"].tolist(),
    )


def mean_curve(runs: list[Run]) -> pd.DataFrame:
    """Validation curve of one batch size, mean (min, max) over its seeds at each point.

    Every seed validates at the same samples seen (validations_per_epoch); steps and
    seconds are the seeds' means.
    """
    frames = [r.validations.assign(seed=r.seed) for r in runs]
    joined = pd.concat(frames, ignore_index=True)
    grouped = joined.groupby("validation" if "validation" in joined.columns else "samples", sort=True)
    curve = grouped.agg(
        samples=("samples", "mean"),
        steps=("step", "mean"),
        train_seconds=("train_time_s", "mean"),
        wall_seconds=("wall_time_s", "mean"),
        val_auroc=("val_auroc", "mean"),
        val_auroc_min=("val_auroc", "min"),
        val_auroc_max=("val_auroc", "max"),
        seeds=("seed", "nunique"),
    )
    return curve[curve.seeds == len(runs)].reset_index(drop=True)


def first_reaching(curve: pd.DataFrame, target: float) -> dict:
    """Samples, steps and seconds at the curve's first point with val_auroc >= target (None: never)."""
    hits = np.flatnonzero(curve["val_auroc"].to_numpy() >= target) if len(curve) else []
    if len(hits) == 0:
        return {
            "samples_to_target": None,
            "steps_to_target": None,
            "seconds_to_target": None,
            "wall_seconds_to_target": None,
        }
    row = curve.iloc[int(hits[0])]
    return {
        "samples_to_target": float(row.samples),
        "steps_to_target": float(row.steps),
        "seconds_to_target": float(row.train_seconds),
        "wall_seconds_to_target": float(row.wall_seconds),
    }


def spread(values) -> dict:
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def noise_summary(runs: list[Run]) -> dict:
    """B_simple from all measurements of these runs, overall and over the second half of training."""
    measurements = [row._asdict() for r in runs for row in r.noise.itertuples(index=False)]
    late = [
        m
        for m in measurements
        if m.get("epochs", 0) >= 0.5 * max((m.get("epochs", 0) for m in measurements), default=0)
    ]
    return {
        "measurements": len(measurements),
        "b_simple": simple_noise_scale(measurements),
        "b_simple_second_half": simple_noise_scale(late),
    }


def finite(value):
    """`value` with every non-finite float in it as None (a slope without a finite fit:
    one class, or risks that separate the classes), so that the JSON stays valid."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def delta(result: dict | None, metric: str) -> dict | None:
    if result is None:
        return None
    part = result[metric]
    return {"estimate": part["estimate"], "ci": part["ci"], "p": part["p"], "p_adjusted": part["p_adjusted"]}


# -- the study ------------------------------------------------------------------------


def protocol(settings: dict, runs: list[Run], n_train: int) -> dict:
    train, model = settings.get("train", {}), settings.get("model", {})
    schedule_keys = ("beta_warmup", "pred_warmup", "recon_decay")
    schedules = {
        key: (
            {"steps": model[f"{key}_steps"]}
            if model.get(f"{key}_steps") is not None
            else {"epochs": model.get(f"{key}_epochs")}
        )
        for key in schedule_keys
    }
    schedules["lr"] = {
        "schedule": train.get("lr_schedule"),
        "warmup_epochs": train.get("lr_warmup_epochs"),
        "eta_min_factor": train.get("eta_min_factor"),
    }
    return {
        "epochs": train.get("epochs"),
        "train_patients": n_train,
        "samples": (train.get("epochs") or 0) * n_train,
        "lr": train.get("lr"),
        "lr_scaling": train.get("lr_scaling"),
        "lr_reference_batch_size": train.get("lr_reference_batch_size"),
        "peak_lr": {str(b): lr for b, lr in sorted({r.batch_size: r.train.get("lr") for r in runs}.items())},
        "seeds": sorted({r.seed for r in runs}),
        "validations_per_epoch": train.get("validations_per_epoch"),
        "class_weights": train.get("class_weights"),
        "keep_weights": train.get("keep_weights", "best_auroc"),
        "head_refit": train.get("head_refit", "none"),
        "schedules": schedules,
    }


def lr_grid_summary(choices: list[dict], settings: dict) -> dict:
    """The learning-rate grid as the report shows it: per batch size every multiplier's
    seed-mean validation AUROC and the choice (validation data only)."""
    train = settings.get("train", {})
    return {
        "multipliers": sorted({m for c in choices for m in c["grid"]}),
        "seeds": sorted({s for c in choices for s in c["seeds"]}),
        "epochs": train.get("lr_grid_epochs") or train.get("epochs"),
        "rule": choices[0]["rule"] if choices else None,
        "criterion": choices[0].get("criterion", "auroc") if choices else None,  # absent before keep_weights
        "batch_sizes": [
            {
                "batch_size": c["batch_size"],
                "chosen": c["chosen"]["multiplier"],
                "peak_lr": c["chosen"]["peak_lr"],
                "edge": c["edge"],
                "candidates": [
                    {
                        key: cand.get(key)  # val_ce_mean: absent in choices of earlier versions
                        for key in (
                            "multiplier",
                            "peak_lr",
                            "val_auroc",
                            "val_auroc_mean",
                            "val_loss_mean",
                            "val_ce_mean",
                        )
                    }
                    for cand in c["candidates"]
                ],
            }
            for c in choices
        ],
    }


def build_study(runs: list[Run], baselines: list[dict], settings: dict, lr_grid: list[dict] | None = None) -> dict:
    """The `batch_comparison.json` object (see docs/report.md) of loaded runs and, with
    `lr_grid`, the learning-rate choice of each batch size (`load_lr_grid`)."""
    report = settings.get("report", {})
    evaluate = settings.get("evaluate", {})
    resamples, boot_seed = evaluate.get("bootstrap_resamples", 1000), evaluate.get("seed", 0)
    labels, groups, ids = aligned_scores(runs, baselines)
    unit = bootstrap_unit(evaluate, settings.get("data", {}).get("format", "csv"))
    clusters = clusters_of(ids, unit)
    sizes = sorted({r.batch_size for r in runs})
    wanted = report.get("reference_batch_size", 1)
    reference = wanted if wanted in sizes else sizes[0]
    by_size = {b: [r for r in runs if r.batch_size == b] for b in sizes}

    # paired differences: each batch size against the reference, and against the best
    # baseline (chosen on the validation split, never on test); Holm within each family
    others = [b for b in sizes if b != reference]
    vs_reference = dict(
        zip(
            others,
            paired.paired_differences(
                labels, groups, [(f"bs{b}", f"bs{reference}") for b in others], resamples, boot_seed, clusters
            ),
        )
    )
    # every batch size against every baseline (Holm within each baseline's family)
    vs_each = {
        base["name"]: dict(
            zip(
                sizes,
                paired.paired_differences(
                    labels, groups, [(f"bs{b}", base["name"]) for b in sizes], resamples, boot_seed, clusters
                ),
            )
        )
        for base in baselines
    }
    best_baseline = (
        max(baselines, key=lambda b: (b.get("chosen_on_valid") or {}).get("val_auroc") or -1.0) if baselines else None
    )
    vs_baseline = vs_each[best_baseline["name"]] if best_baseline is not None else {}

    curves = {b: mean_curve(rs) for b, rs in by_size.items()}
    best_mean = max(
        (float(c["val_auroc"].max()) for c in curves.values() if len(c) and c["val_auroc"].notna().any()), default=None
    )
    share = report.get("target_share", 0.95)
    target = None if best_mean is None else share * best_mean

    reference_speed = np.mean([r.train["patients_per_s"] for r in by_size[reference]])
    entries = []
    for b, rs in by_size.items():
        curve = curves[b]
        entry = {
            "batch_size": b,
            "seeds": [r.seed for r in rs],
            "peak_lr": rs[0].train.get("lr"),
            "lr_multiplier": rs[0].train.get("lr_multiplier", 1.0),
            "steps": spread(r.train.get("steps") for r in rs)["mean"],
            "patients_per_s": spread(r.train["patients_per_s"] for r in rs),
            "relative_speed": float(np.mean([r.train["patients_per_s"] for r in rs]) / reference_speed),
            "train_peak_memory_mb": max(r.train["peak_rss_mb"] for r in rs),
            "train_peak_gpu_memory_mb": spread(r.train.get("cuda_max_allocated_mb") for r in rs)["max"],
            "eval_patients_per_s": spread((r.eval.get("inference") or {}).get("patients_per_s") for r in rs)["mean"],
            "wall_time_s": spread(r.train.get("wall_time_s") for r in rs),
        }
        for metric in ("auroc", "auprc"):
            per_seed = [{"seed": r.seed, "estimate": r.eval[metric], "ci": r.eval[f"{metric}_ci"]} for r in rs]
            entry[f"test_{metric}"] = {
                "mean": paired.point_estimate(labels, groups[f"bs{b}"], metric),
                "per_seed": per_seed,
            }
            entry[f"delta_{metric}_vs_reference"] = delta(vs_reference.get(b), metric)
            entry[f"delta_{metric}_vs_best_baseline"] = delta(vs_baseline.get(b), metric)
        # calibration: seed means of each seed's value, paired deltas against the reference;
        # the reliability points of the seed-mean probabilities (a figure)
        entry["calibration"] = {
            metric: {
                "mean": finite(paired.point_estimate(labels, groups[f"bs{b}"], metric)),
                "delta_vs_reference": finite(delta(vs_reference.get(b), metric)),
            }
            for metric in CALIBRATION
        }
        entry["calibration"]["reliability"] = reliability_table(labels, groups[f"bs{b}"].mean(axis=0))
        entry.update(first_reaching(curve, target) if target is not None else first_reaching(curve.iloc[0:0], 0.0))
        entry["validation_points"] = int(min(len(r.validations) for r in rs))
        entry["validation_curve"] = curve.drop(columns="seeds").to_dict(orient="records")
        entry["quality"] = {key: spread(r.eval.get(key) for r in rs)["mean"] for key in ("recon", "kl", "brier")}
        entry["quality"]["active_units"] = spread((r.eval.get("active_units") or {}).get("active") for r in rs)["mean"]
        entry["quality"]["latent_units"] = (rs[0].eval.get("active_units") or {}).get("units")
        entry["gradient_noise_scale"] = noise_summary(rs)
        entries.append(entry)

    return {
        "reference_batch_size": reference,
        "protocol": protocol(settings, runs, int(runs[0].train.get("train_patients") or 0)),
        "lr_grid": lr_grid_summary(lr_grid, settings) if lr_grid else None,
        "test_split": {"patients": int(len(labels)), "positives": int(labels.sum())},
        "target": {"metric": "val_auroc", "share_of_best_mean": share, "best_mean": best_mean, "value": target},
        "gradient_noise_scale": noise_summary(runs),
        "batch_sizes": entries,
        "baselines": [
            {
                "name": b["name"],
                "chosen_on_valid": b.get("chosen_on_valid"),
                "test_auroc": {"estimate": b["auroc"], "ci": b["auroc_ci"]},
                "test_auprc": {"estimate": b["auprc"], "ci": b["auprc_ci"]},
                "calibration": {
                    **{
                        metric: finite(paired.point_estimate(labels, groups[b["name"]], metric))
                        for metric in CALIBRATION
                    },
                    "reliability": reliability_table(labels, groups[b["name"]][0]),
                },
                "batch_sizes_minus_baseline": [
                    {
                        "batch_size": size,
                        "auroc": delta(vs_each[b["name"]][size], "auroc"),
                        "auprc": delta(vs_each[b["name"]][size], "auprc"),
                    }
                    for size in sizes
                ],
            }
            for b in baselines
        ],
        "best_baseline": None if best_baseline is None else best_baseline["name"],
        "significance_level": SIGNIFICANCE,
        "bootstrap": {
            "resamples": resamples,
            "seed": boot_seed,
            "paired": True,
            "seeds": "averaged within each batch size; resampled with replacement in every resample",
            "unit": unit,
        },
        "device": sorted({str(r.train.get("device")) for r in runs}),
    }
