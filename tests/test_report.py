"""seqsetvae memory and seqsetvae report on fixture outputs (JSON, JSONL, TSV, Parquet)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqsetvae.errors import InputError
from seqsetvae.evaluation import memory
from seqsetvae.evaluation.calibration import ece_rows, recalibration_rows, reliability_table
from seqsetvae.evaluation.evaluate import write_predictions
from seqsetvae.evaluation.metrics import classification_metrics
from seqsetvae.evaluation.paired import paired_differences
from seqsetvae.reports import batch_comparison as report
from seqsetvae.reports import environment, tables
from seqsetvae.training import lr_grid

BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
N_TEST, N_TRAIN = 200, 40
LABELS = np.tile([0, 1, 0, 0], N_TEST // 4)
IDS = [f"P{i:03d}" for i in range(N_TEST)]
SETTINGS = {
    "train": {
        "epochs": 2,
        "lr": 1e-3,
        "lr_scaling": "sqrt",
        "lr_reference_batch_size": 1,
        "lr_schedule": "cosine",
        "lr_warmup_epochs": 0.1,
        "validations_per_epoch": 2,
    },
    "model": {"beta_warmup_epochs": 1.0, "pred_warmup_epochs": 0.0, "recon_decay_epochs": 1.0},
    "evaluate": {"bootstrap_resamples": 200, "seed": 0},
    "report": {"reference_batch_size": 1, "target_share": 0.95},
}


def probabilities(signal: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(signal * (LABELS - 0.5) + rng.standard_normal(N_TEST))))


def write_run(
    results: Path,
    b: int,
    seed: int,
    *,
    speed: float,
    signal: float,
    rss: float,
    gpu: float | None = None,
    multiplier: float = 1.0,
) -> None:
    """Every file the training, evaluation and benchmark records would hold for one run."""
    name = f"bs{b}/lr{multiplier:g}/seed{seed}"
    run = results / "runs" / name
    run.mkdir(parents=True)
    steps_per_epoch = -(-N_TRAIN // b)
    patients_per_s = speed * (1 + 0.1 * seed)
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "batch_size": b,
                "seed": seed,
                "patients_per_s": patients_per_s,
                "events_per_s": patients_per_s * 150.0,
                "fill_ratio": 1.0,
                "wall_time_s": 100.0 / patients_per_s,
                "train_time_s": 80 / patients_per_s,
                "epochs": 2,
                "steps": 2 * steps_per_epoch,
                "train_patients": N_TRAIN,
                "peak_rss_mb": rss + seed,
                "cuda_max_allocated_mb": gpu,
                "cuda_max_reserved_mb": gpu and gpu * 1.5,
                "device": "cuda" if gpu else "cpu",
                "threads": 2,
                "precision": "fp32",
                "torch_version": "2.13.0+cpu",
                "largest_batch": {"patients": b, "events": 300 * b, "sets": 100 * b},
                "lr": 1e-3 * b**0.5 * multiplier,
                "lr_multiplier": multiplier,
            }
        )
    )
    lines, samples, step, k = [], 0, 0, 0
    batches = [
        min(b, N_TRAIN - start) for _ in range(2) for start in range(0, N_TRAIN, b)
    ]  # an epoch's last batch is short
    for size in batches:
        samples, step = samples + size, step + 1
        lines.append({"kind": "step", "step": step, "samples": samples, "loss": 3.0 / step})
        if step == 2:
            lines.append(
                {
                    "kind": "noise_scale",
                    "step": step,
                    "epochs": samples / N_TRAIN,
                    "gradient_sq": 2.0,
                    "trace_sigma": 8.0 * b,
                }
            )
        if samples >= (k + 1) * N_TRAIN // 2:  # validations_per_epoch 2
            k += 1
            lines.append(
                {
                    "kind": "validation",
                    "validation": k,
                    "step": step,
                    "samples": samples,
                    "val_auroc": 0.5 + 0.1 * k - 0.01 * b,
                    "val_loss": 1.0,
                    "train_time_s": step / patients_per_s,
                    "wall_time_s": 2 * step / patients_per_s,
                }
            )
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")

    p = probabilities(signal, seed=100 * b + seed)
    (results / "eval" / f"bs{b}" / f"lr{multiplier:g}").mkdir(parents=True, exist_ok=True)
    write_predictions(results / "eval" / f"{name}_predictions.parquet", IDS, LABELS, p)
    evaluation = {
        "batch_size": b,
        "seed": seed,
        **classification_metrics(LABELS, p, 200, 0),
        "recon": 0.5 + b / 100,
        "kl": 0.2,
        "active_units": {"active": 10 + b, "units": 32},
        "inference": {"patients_per_s": 4 * speed},
        "memory": {
            "peak_rss_mb": rss * 0.8,
            "cuda_max_allocated_mb": gpu and gpu / 4,
            "cuda_max_reserved_mb": gpu and gpu / 2,
        },
        "largest_batch": {"patients": b, "events": 10, "sets": 5},
    }
    (results / "eval" / f"{name}.json").write_text(json.dumps(evaluation))
    for job in ("train", "evaluate"):
        (results / "benchmarks" / job / f"bs{b}" / f"lr{multiplier:g}").mkdir(parents=True, exist_ok=True)
        (results / "benchmarks" / job / f"{name}.tsv").write_text(
            BENCHMARK_HEADER + f"10.0\t0:00:10\t{rss + 5:.2f}\t1\t1\t1\t0\t0\t90\t10\n"
        )
    rc = memory.main(
        [
            "--batch-size",
            str(b),
            "--train-summary",
            str(run / "metrics.json"),
            "--train-benchmark",
            str(results / "benchmarks" / "train" / f"{name}.tsv"),
            "--eval-metrics",
            str(results / "eval" / f"{name}.json"),
            "--eval-benchmark",
            str(results / "benchmarks" / "evaluate" / f"{name}.tsv"),
            "--out",
            str(results / "memory" / f"{name}.json"),
        ]
    )
    assert rc == 0


def write_baseline(results: Path, name: str, signal: float, val_auroc: float, chosen: dict | None = None) -> None:
    p = probabilities(signal, seed=len(name))
    (results / "baselines").mkdir(parents=True, exist_ok=True)
    write_predictions(results / "baselines" / f"{name}_predictions.parquet", IDS, LABELS, p)
    summary = {
        "name": name,
        "split": "test",
        "chosen_on_valid": {"val_auroc": val_auroc, **(chosen or {})},
        **classification_metrics(LABELS, p, 200, 0),
    }
    (results / "baselines" / f"{name}.json").write_text(json.dumps(summary))


def build_results(tmp_path: Path, batch_sizes=(1, 4, 16), seeds=(0, 1), signals=None, cuda: bool = False) -> Path:
    results = tmp_path / "results"
    speeds = {1: 10.0, 2: 12.0, 4: 25.0, 8: 22.0, 16: 20.0}
    signals = signals or {1: 3.0, 2: 3.0, 4: 3.0, 8: 3.0, 16: 3.0}
    for b in batch_sizes:
        for s in seeds:
            write_run(
                results, b, s, speed=speeds[b], signal=signals[b], rss=500.0 + 40 * b, gpu=300.0 * b if cuda else None
            )
    write_baseline(results, "logistic_regression", 2.0, 0.80)
    write_baseline(results, "gradient_boosting", 4.0, 0.85)
    (results / "qc.json").write_text(
        json.dumps(
            {
                "rows_in": 73600,
                "rows_kept": 73500,
                "rows_dropped": {"duplicate_row": 60, "negative_time": 40},
                "by_split": {
                    "train": {"patients": N_TRAIN, "events": 12000, "sets": 4000},
                    "valid": {"patients": 5, "events": 1500, "sets": 500},
                    "test": {"patients": N_TEST, "events": 60000, "sets": 20000},
                },
            }
        )
    )
    (results / "shards").mkdir()
    (results / "shards" / "index.json").write_text(json.dumps({"vocab_size": 40}))
    return results


GRID = (0.5, 1.0, 2.0)


def grid_choices(results: Path, batch_sizes, best: dict | None = None) -> list[str]:
    """results/lr_grid/bsB.json for each batch size, from grid runs' summaries in which the
    multiplier `best[B]` (default 1) has the highest validation AUROC."""
    paths = []
    for b in batch_sizes:
        summaries = [
            (
                Path(f"grid/bs{b}/lr{m:g}/seed{s}/metrics.json"),
                {
                    "batch_size": b,
                    "seed": s,
                    "lr_multiplier": m,
                    "lr": 1e-3 * m,
                    "epochs": 1,
                    "best": {
                        "val_auroc": 0.8 - 0.1 * abs(np.log2(m / (best or {}).get(b, 1.0))) + 0.01 * s,
                        "val_loss": 0.5,
                    },
                },
            )
            for m in GRID
            for s in (0, 1)
        ]
        path = results / "lr_grid" / f"bs{b}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(lr_grid.choose(b, list(GRID), summaries)))
        paths.append(str(path))
    return paths


def run_report(
    tmp_path: Path, results: Path, batch_sizes=(1, 4, 16), seeds=(0, 1), settings=SETTINGS
) -> tuple[str, dict]:
    out = tmp_path / "reports" / "batch_comparison.md"
    runs = [f"bs{b}/lr1/seed{s}" for b in batch_sizes for s in seeds]
    argv = [
        "--settings",
        json.dumps(settings),
        "--results",
        str(results),
        "--runs",
        *runs,
        "--lr-grid",
        *grid_choices(results, batch_sizes),
        "--baselines",
        "logistic_regression",
        "gradient_boosting",
        "--out",
        str(out),
    ]
    assert report.main(argv) == 0
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def section(text: str, heading: str) -> str:
    return text.split(f"{heading}\n", 1)[1].split("\n## ", 1)[0]


def table(text: str, heading: str) -> pd.DataFrame:
    """The first Markdown table under `heading`, as strings."""
    lines = [line for line in section(text, heading).splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    width = len(cells[0])
    body = [row for row in cells[2:] if len(row) == width]
    return pd.DataFrame(body[: next((i for i, r in enumerate(body) if r == cells[0]), len(body))], columns=cells[0])


def shown(cell: str, value, signed: bool = False) -> bool:
    """Whether a report cell is `value` (a number or a [low, high] CI) as the report rounds it.

    Compares against the value formatted to the cell's own decimals, so a value that lands
    on a rounding boundary cannot make the check flaky the way a tolerance can.
    """
    if isinstance(value, (list, tuple)):
        match = re.fullmatch(r"\[(-?[\d.]+), (-?[\d.]+)\]", cell)
        return bool(match) and [match.group(1), match.group(2)] == [f"{v:.3f}" for v in value]
    text = cell.rstrip("x")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return text == (f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}")


# -- memory ---------------------------------------------------------------------------


def test_benchmark_tsv_missing_values_become_null(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text(BENCHMARK_HEADER + "2.51\t0:00:02\t-\t-\t-\t-\tNA\tNA\t-\t-\n")
    assert memory.read_benchmark(path) == {"max_rss_mb": None, "wall_s": 2.51, "records": 1}
    path.write_text(
        BENCHMARK_HEADER
        + "4.00\t0:00:04\t100.5\t1\t1\t1\t0\t0\t1\t1\n"
        + "2.00\t0:00:02\t300.25\t1\t1\t1\t0\t0\t1\t1\n"
        + "3.00\t0:00:03\tNA\t1\t1\t1\t0\t0\t1\t1\n"
    )
    assert memory.read_benchmark(path) == {"max_rss_mb": 300.25, "wall_s": 3.0, "records": 3}


def test_benchmark_tsv_without_columns_is_an_input_error(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match=r"b\.tsv.*'s'"):
        memory.read_benchmark(path)


def test_memory_report_fields(tmp_path):
    results = build_results(tmp_path, (1, 4), seeds=(0,))
    mem = json.loads((results / "memory" / "bs4" / "lr1" / "seed0.json").read_text())
    assert mem["batch_size"] == 4 and mem["device"] == "cpu"
    assert mem["train"]["peak_rss_mb"] == 660.0 and mem["train"]["peak_rss_mb_per_patient"] == pytest.approx(660.0 / 4)
    assert mem["train"]["benchmark"] == {"max_rss_mb": 665.0, "wall_s": 10.0, "records": 1}
    assert mem["eval"]["peak_rss_mb"] == pytest.approx(660.0 * 0.8)
    assert mem["train"]["cuda_max_allocated_mb"] is None and mem["train"]["cuda_max_allocated_mb_per_patient"] is None
    assert mem["largest_batch"]["train"] == {"patients": 4, "events": 1200, "sets": 400}


# -- the study's JSON -------------------------------------------------------------------


def test_json_holds_the_issue_fields_and_paired_statistics(tmp_path):
    results = build_results(tmp_path)
    _, study = run_report(tmp_path, results)
    assert study["reference_batch_size"] == 1 and study["test_split"] == {"patients": N_TEST, "positives": N_TEST // 4}
    assert (
        study["protocol"]["epochs"] == 2
        and study["protocol"]["samples"] == 2 * N_TRAIN
        and study["protocol"]["seeds"] == [0, 1]
    )
    assert study["protocol"]["lr_scaling"] == "sqrt" and study["protocol"]["schedules"]["beta_warmup"] == {
        "epochs": 1.0
    }
    assert [e["batch_size"] for e in study["batch_sizes"]] == [1, 4, 16]
    groups = {
        f"bs{b}": np.vstack(
            [
                pd.read_parquet(results / "eval" / f"bs{b}" / "lr1" / f"seed{s}_predictions.parquet")
                .sort_values("patient_id")
                .probability.to_numpy()
                for s in (0, 1)
            ]
        )
        for b in (1, 4, 16)
    }
    expected = paired_differences(LABELS, groups, [("bs4", "bs1"), ("bs16", "bs1")], 200, 0)
    for e in study["batch_sizes"]:
        runs = [
            json.loads((results / "runs" / f"bs{e['batch_size']}" / "lr1" / f"seed{s}" / "metrics.json").read_text())
            for s in (0, 1)
        ]
        speeds = [r["patients_per_s"] for r in runs]
        assert e["seeds"] == [0, 1] and e["patients_per_s"] == pytest.approx(
            {"mean": np.mean(speeds), "min": min(speeds), "max": max(speeds)}
        )
        assert e["train_peak_memory_mb"] == max(r["peak_rss_mb"] for r in runs)
        per_seed = [
            json.loads((results / "eval" / f"bs{e['batch_size']}" / "lr1" / f"seed{s}.json").read_text())["auroc"]
            for s in (0, 1)
        ]
        assert [s["estimate"] for s in e["test_auroc"]["per_seed"]] == per_seed
        assert e["test_auroc"]["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert e["validation_points"] == 4 and len(e["validation_curve"]) == 4
        if e["batch_size"] == 1:
            assert e["delta_auroc_vs_reference"] is None and e["delta_auprc_vs_reference"] is None
        else:
            d = expected[[4, 16].index(e["batch_size"])]
            for metric in ("auroc", "auprc"):
                got = e[f"delta_{metric}_vs_reference"]
                assert got == {k: d[metric][k] for k in ("estimate", "ci", "p", "p_adjusted")}
            for metric in ("ece", "calibration_slope", "calibration_intercept"):
                got = e["calibration"][metric]["delta_vs_reference"]
                assert got == {k: d[metric][k] for k in ("estimate", "ci", "p", "p_adjusted")}
        # calibration: the seed mean of each seed's ECE / slope / intercept, computed directly
        probabilities = groups[f"bs{e['batch_size']}"]
        slopes, intercepts = zip(*(recalibration_rows(LABELS, row) for row in probabilities))
        assert e["calibration"]["ece"]["mean"] == pytest.approx(
            np.mean([ece_rows(LABELS, row)[0] for row in probabilities])
        )
        assert e["calibration"]["calibration_slope"]["mean"] == pytest.approx(np.mean(slopes))
        assert e["calibration"]["calibration_intercept"]["mean"] == pytest.approx(np.mean(intercepts))
        assert e["calibration"]["reliability"] == reliability_table(LABELS, probabilities.mean(axis=0))
        if e["batch_size"] == 1:
            assert all(e["calibration"][m]["delta_vs_reference"] is None for m in ("ece", "calibration_slope"))
    # baselines: a list with estimates and CIs; the best is chosen on validation, not test
    assert [b["name"] for b in study["baselines"]] == ["logistic_regression", "gradient_boosting"]
    assert (
        set(study["baselines"][0]["test_auroc"]) == {"estimate", "ci"} and study["best_baseline"] == "gradient_boosting"
    )
    # time to target: 95% of the best seed-mean validation curve (bs1 ends at 0.89)
    assert study["target"]["best_mean"] == pytest.approx(0.89) and study["target"]["value"] == pytest.approx(
        0.95 * 0.89
    )
    bs1 = study["batch_sizes"][0]
    assert bs1["samples_to_target"] == 80 and bs1["steps_to_target"] == 80  # only the last point (0.89) reaches 0.8455
    assert study["batch_sizes"][2]["samples_to_target"] is None  # bs16's curve tops out at 0.74
    # noise scale: trace / |G|^2 pooled over every measurement (one per run: 8b / 2)
    assert study["gradient_noise_scale"]["b_simple"] == pytest.approx(
        np.mean([8.0 * b for b in (1, 1, 4, 4, 16, 16)]) / 2.0
    )
    assert study["batch_sizes"][1]["gradient_noise_scale"]["b_simple"] == pytest.approx(16.0)


def test_summary_claims_only_what_the_adjusted_test_supports(tmp_path):
    # bs4 and bs16 as good as bs1 (same signal): no claim; then bs16 made far worse: claimed
    results = build_results(tmp_path)
    text, study = run_report(tmp_path, results)
    summary = study["summary"]
    assert not any("higher than batch size 1" in s or "lower than batch size 1" in s for s in summary if "AUROC" in s)
    assert any("indistinguishable from batch size 1" in s and "AUROC" in s for s in summary)
    assert summary == [line[2:] for line in section(text, "## Summary").strip().splitlines()]

    worse = build_results(tmp_path / "worse", signals={1: 3.0, 4: 3.0, 16: 0.2})
    _, study = run_report(tmp_path / "worse", worse)
    bs16 = study["batch_sizes"][2]["delta_auroc_vs_reference"]
    assert bs16["p_adjusted"] < 0.05 and bs16["estimate"] < 0
    assert any(s.startswith("Batch size 16's mean test AUROC is lower than batch size 1's") for s in study["summary"])
    # the gradient-boosting baseline (signal 4) is better than every VAE run: said plainly
    assert any(s.startswith("The VAE is worse than the gradient boosting baseline") for s in study["summary"])


def test_report_numbers_equal_the_json(tmp_path):
    results = build_results(tmp_path)
    text, study = run_report(tmp_path, results)
    quality = table(text, "## Test-set quality")
    assert quality["model"].tolist() == [
        "batch size 1",
        "batch size 4",
        "batch size 16",
        "baseline: logistic_regression",
        "baseline: gradient_boosting",
    ]
    deltas = table(text, "### Paired differences against batch size 1")
    against_baseline = table(
        text, "### Paired differences against the best baseline (gradient_boosting, chosen on the validation split)"
    )
    speed = table(text, "## Speed and memory")
    target = table(text, "## Time to target")
    for i, e in enumerate(study["batch_sizes"]):
        row = quality.iloc[i]
        assert shown(row["test AUROC (mean)"], e["test_auroc"]["mean"]) and shown(
            row["test AUPRC (mean)"], e["test_auprc"]["mean"]
        )
        seeds = row.iloc[3].split("; ")
        for cell, s in zip(seeds, e["test_auroc"]["per_seed"]):
            value, ci = cell.split(" ", 1)
            assert shown(value, s["estimate"]) and shown(ci, s["ci"])
        for frame, key in ((deltas, "reference"), (against_baseline, "best_baseline")):
            row, d = frame.iloc[i], e[f"delta_auroc_vs_{key}"]
            if d is None:
                assert row["Δ AUROC"] == "(reference)"
            else:
                assert shown(row["Δ AUROC"], d["estimate"], signed=True) and shown(row.iloc[2], d["ci"])
                assert row.iloc[3] == tables.fmt_p(d["p_adjusted"])
        row = speed.iloc[i]
        assert shown(row["patients/s (mean)"], e["patients_per_s"]["mean"]) and shown(
            row["relative speed"], e["relative_speed"]
        )
        assert shown(row["train peak RSS (MiB)"], e["train_peak_memory_mb"])
        row = target.iloc[i]
        assert row["samples to target"] == tables.fmt(e["samples_to_target"], 0)
        assert int(row["validation points"]) == e["validation_points"]
    for j, b in enumerate(study["baselines"]):
        row = quality.iloc[3 + j]
        assert shown(row["test AUROC (mean)"], b["test_auroc"]["estimate"]) and shown(
            row.iloc[3], b["test_auroc"]["ci"]
        )
    assert "GPU allocated" not in text  # a CPU run's memory is RSS
    claim = table(text, "## The original guide's claim")
    assert claim["claimed relative speed"].tolist() == ["1.0x", "2.5x", "4.0x", "6.0x"]
    assert claim.loc[3, "measured (vs batch size 1)"] == tables.fmt(study["batch_sizes"][2]["relative_speed"], 2) + "x"
    assert claim.loc[2, "measured (vs batch size 1)"] == "not run"
    # protocol in two sentences at the top, and what was held equal
    top = text.split("## Summary", 1)[0]
    assert "same budget of 2 epochs (80 samples of 40 train patients) with 2 seed(s) each" in top
    assert "same 200 test patients (50 positive)" in top and "How to read this" in top


def test_report_figures_exist_and_are_linked(tmp_path):
    results = build_results(tmp_path, (1, 4), seeds=(0,))
    text, _ = run_report(tmp_path, results, (1, 4), (0,))
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(f"figures/{name}" for name in report.FIGURES.values())
    for link in links:
        png = (tmp_path / "reports" / link).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_cuda_run_reports_gpu_memory(tmp_path):
    results = build_results(tmp_path, (1, 4), seeds=(0,), cuda=True)
    text, study = run_report(tmp_path, results, (1, 4), (0,))
    assert [e["train_peak_gpu_memory_mb"] for e in study["batch_sizes"]] == [300.0, 1200.0]
    claim = table(text, "## The original guide's claim")
    assert claim.loc[1, "measured training peak, GPU allocated (GiB)"] == f"{1200 / 1024:.2f}"
    assert "device: cuda;" in text


def test_no_batch_size_1_uses_the_smallest_as_reference(tmp_path):
    results = build_results(tmp_path, (4, 16), seeds=(0,))
    _, study = run_report(tmp_path, results, (4, 16), (0,))
    assert study["reference_batch_size"] == 4 and study["batch_sizes"][0]["relative_speed"] == 1.0


def test_a_regression_c_at_its_grids_end_is_said(tmp_path):
    results = build_results(tmp_path, (1, 4), seeds=(0,))
    text, _ = run_report(tmp_path, results, (1, 4), (0,))
    assert "is an end of `baseline.lr_c_grid`" not in text
    write_baseline(results, "logistic_regression", 2.0, 0.80, {"C": 0.0001, "at_grid_edge": True})
    text, study = run_report(tmp_path, results, (1, 4), (0,))
    assert study["baselines"][0]["chosen_on_valid"] == {"val_auroc": 0.80, "C": 0.0001, "at_grid_edge": True}
    assert (
        "The logistic regression's C (0.0001) is an end of `baseline.lr_c_grid`: a wider grid may make it stronger."
        in text.split("## Test-set quality")[1]
    )


def test_a_gru_baseline_is_a_row_and_can_be_the_best_baseline(tmp_path):
    results = build_results(tmp_path, (1, 4), seeds=(0,))
    write_baseline(results, "gru", 5.0, 0.90)  # the best on validation
    out = tmp_path / "reports" / "batch_comparison.md"
    names = ["logistic_regression", "gradient_boosting", "gru"]
    argv = [
        "--settings",
        json.dumps(SETTINGS),
        "--results",
        str(results),
        "--runs",
        "bs1/lr1/seed0",
        "bs4/lr1/seed0",
        "--lr-grid",
        *grid_choices(results, (1, 4)),
        "--baselines",
        *names,
        "--out",
        str(out),
    ]
    assert report.main(argv) == 0
    text, study = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert [b["name"] for b in study["baselines"]] == names and study["best_baseline"] == "gru"
    gru = study["baselines"][2]
    assert gru["test_auroc"]["estimate"] == json.loads((results / "baselines" / "gru.json").read_text())["auroc"]
    quality = table(text, "## Test-set quality")
    assert quality["model"].tolist()[-1] == "baseline: gru"
    assert shown(quality.iloc[-1]["test AUROC (mean)"], gru["test_auroc"]["estimate"])

    # the paired deltas are against the gru's own test predictions
    def frame(*path):
        return pd.read_parquet(results.joinpath(*path)).probability.to_numpy()[None, :]

    groups = {f"bs{b}": frame("eval", f"bs{b}", "lr1", "seed0_predictions.parquet") for b in (1, 4)}
    groups |= {n: frame("baselines", f"{n}_predictions.parquet") for n in names}
    expected = paired_differences(LABELS, groups, [("bs1", "gru"), ("bs4", "gru")], 200, 0)
    against = table(text, "### Paired differences against the best baseline (gru, chosen on the validation split)")
    for i, e in enumerate(study["batch_sizes"]):
        d = e["delta_auroc_vs_best_baseline"]
        assert d == {k: expected[i]["auroc"][k] for k in ("estimate", "ci", "p", "p_adjusted")}
        assert shown(against.iloc[i]["Δ AUROC"], d["estimate"], signed=True)
    # and every batch size against every baseline, Holm within each baseline
    every = table(text, "### Paired AUROC differences against every baseline")
    for name in names:
        expected = paired_differences(LABELS, groups, [("bs1", name), ("bs4", name)], 200, 0)
        entry = next(b for b in study["baselines"] if b["name"] == name)
        for i, d in enumerate(entry["batch_sizes_minus_baseline"]):
            assert d["batch_size"] == (1, 4)[i]
            assert d["auroc"] == {k: expected[i]["auroc"][k] for k in ("estimate", "ci", "p", "p_adjusted")}
            assert every.iloc[i][f"Δ AUROC vs {name} [95% CI], Holm p"].startswith(f"{d['auroc']['estimate']:+.3f} ")


def test_environment_section(tmp_path):
    results = build_results(tmp_path, (1, 4), seeds=(0,))
    text, _ = run_report(tmp_path, results, (1, 4), (0,))
    env = section(text, "## Environment")
    assert environment.settings_digest(SETTINGS) in env
    assert "device: cpu; torch 2.13.0+cpu; CPU threads: 2; precision: fp32" in env
    assert re.search(r"project commit: ([0-9a-f]{40}|unknown)", env)
    assert "test: 200 patients, 20000 sets, 60000 events" in env
    assert "event rows: 73600 read, 73500 kept, 100 dropped" in env and "variables (train vocabulary): 40" in env


def test_missing_output_names_the_file(tmp_path):
    results = build_results(tmp_path, (1, 4), seeds=(0,))
    (results / "eval" / "bs4" / "lr1" / "seed0.json").unlink()
    out = tmp_path / "reports" / "batch_comparison.md"
    with pytest.raises(InputError, match=r"eval/bs4/lr1/seed0\.json: missing"):
        report.main(["--results", str(results), "--runs", "bs1/lr1/seed0", "bs4/lr1/seed0", "--out", str(out)])
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_settings_without_the_runs_config_are_an_input_error(tmp_path):
    results = build_results(tmp_path, (1, 4), seeds=(0,))
    out = tmp_path / "reports" / "batch_comparison.md"
    argv = ["--results", str(results), "--runs", "bs1/lr1/seed0", "bs4/lr1/seed0", "--out", str(out)]
    with pytest.raises(InputError, match=r"--settings: no model or train section"):
        report.main(["--settings", "{}", *argv])
    assert not out.exists()


def test_predictions_of_different_patients_are_an_input_error(tmp_path):
    results = build_results(tmp_path, (1, 4), seeds=(0,))
    path = results / "eval" / "bs4" / "lr1" / "seed0_predictions.parquet"
    frame = pd.read_parquet(path)
    write_predictions(path, ["X"] + IDS[1:], frame.label.to_numpy(), frame.probability.to_numpy())
    with pytest.raises(InputError, match=r"test predictions of bs4/seed0 and bs1/seed0 are not of the same patients"):
        run_report(tmp_path, results, (1, 4), (0,))


def test_environment_names_each_machine_and_the_runs_on_it():
    from types import SimpleNamespace

    from seqsetvae.reports.environment import _machine_line, machines

    cpu_node = {"host": "node1", "cpu": "AMD EPYC", "gpu": None, "gpus_visible": 0, "cuda": None, "driver": None}
    gpu_node = {
        "host": "gpu7",
        "cpu": "Intel Xeon",
        "gpu": "NVIDIA H200",
        "gpus_visible": 1,
        "cuda": "12.8",
        "driver": "570.1",
    }
    runs = [
        SimpleNamespace(batch_size=1, seed=0, train={"machine": cpu_node, "device": "cpu", "device_requested": "auto"}),
        SimpleNamespace(
            batch_size=4, seed=0, train={"machine": gpu_node, "device": "cuda", "device_requested": "auto"}
        ),
        SimpleNamespace(batch_size=1, seed=1, train={"machine": cpu_node, "device": "cpu", "device_requested": "cpu"}),
    ]
    found = machines(runs)
    assert [(m["host"], m["runs"], m["auto_fell_back_to_cpu"]) for m in found] == [
        ("node1", ["bs1/seed0", "bs1/seed1"], True),
        ("gpu7", ["bs4/seed0"], False),
    ]
    assert _machine_line(found[0]) == (
        "  - node1: CPU AMD EPYC, no GPU; train.device auto fell back to the CPU: bs1/seed0, bs1/seed1"
    )
    assert _machine_line(found[1]) == (
        "  - gpu7: CPU Intel Xeon, GPU NVIDIA H200 (1 visible), CUDA 12.8, driver 570.1: bs4/seed0"
    )


def test_a_calibration_without_a_finite_fit_is_null_not_nan(tmp_path):
    """Risks that separate the classes have no finite recalibration slope: null in the
    JSON, a dash in the report, never a crash."""
    from seqsetvae.reports.study import finite

    assert finite({"a": float("nan"), "b": [1.0, float("inf")], "c": None}) == {"a": None, "b": [1.0, None], "c": None}
    assert tables.fmt(None) == tables.MISSING


@pytest.mark.parametrize("keep", [None, "lowest_cross_entropy"])
def test_the_learning_rate_grid_section_shows_what_the_choice_read(keep):
    from seqsetvae.reports.study import lr_grid_summary

    # AUROC prefers x2, cross-entropy x0.5: the section shows the numbers of the rule used
    points = {0.5: (0.70, 0.20), 1.0: (0.72, 0.25), 2.0: (0.80, 0.30)}
    summaries = [
        (
            Path(f"grid/bs4/lr{m:g}/seed0/metrics.json"),
            {
                "batch_size": 4,
                "seed": 0,
                "lr_multiplier": m,
                "lr": 1e-3 * m,
                "epochs": 1,
                **({"keep_weights": keep} if keep else {}),
                "best": {"val_auroc": auroc, "val_loss": 0.5, "val_ce": ce},
            },
        )
        for m, (auroc, ce) in points.items()
    ]
    choice = lr_grid.choose(4, list(points), summaries)
    study = {"lr_grid": lr_grid_summary([choice], {"train": {"lr_grid_epochs": 1}})}
    rows = table("\n".join(report.lr_grid_section(study, "figures")), "## Learning-rate grid")
    if keep is None:
        assert list(rows.iloc[0]) == [
            "4",
            "0.700 (0.0005)",
            "0.720 (0.001)",
            "**0.800 (0.002)**",
            "x2; the grid's highest rate: a wider grid may do better",
        ]
    else:
        assert list(rows.iloc[0])[1:4] == [
            "**0.700 / 0.200 (0.0005)**",
            "0.720 / 0.250 (0.001)",
            "0.800 / 0.300 (0.002)",
        ]
        assert "chosen: the lowest seed-mean validation cross-entropy" in "\n".join(report.lr_grid_section(study, "f"))


@pytest.mark.parametrize(
    "protocol, words",
    [
        ({}, "the best-validation-AUROC point"),
        ({"keep_weights": "last", "head_refit": "none"}, "the last validation point"),
        (
            {"keep_weights": "last", "head_refit": "regression"},
            "the last validation point, its linear head refitted on the train split (train.head_refit)",
        ),
    ],
)
def test_the_report_names_the_weights_the_test_split_scored(protocol, words):
    from seqsetvae.reports.environment import kept_weights_words

    assert kept_weights_words(protocol) == words
