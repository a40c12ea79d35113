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
from seqsetvae.evaluation.evaluate import write_predictions
from seqsetvae.evaluation.metrics import classification_metrics
from seqsetvae.reports import batch_comparison as report

BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_run(results: Path, b: int, *, patients_per_s: float, auroc_shift: float, rss: float, seed: int, gpu: float | None = None) -> None:
    """Every file the training, evaluation and benchmark records would hold for batch size b."""
    run = results / "runs" / f"bs{b}"
    run.mkdir(parents=True)
    steps_per_epoch = 40 // b
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "batch_size": b, "patients_per_s": patients_per_s, "events_per_s": patients_per_s * 150.0,
                "fill_ratio": 1.0 if b == 1 else 0.8, "wall_time_s": 1000.0 / patients_per_s, "train_time_s": 800 / patients_per_s,
                "epochs": 2, "steps": 2 * steps_per_epoch, "peak_rss_mb": rss, "cuda_max_allocated_mb": gpu,
                "cuda_max_reserved_mb": gpu and gpu * 1.5, "device": "cuda" if gpu else "cpu", "threads": 2, "precision": "fp32",
                "torch_version": "2.13.0+cpu", "best_epoch": 2, "best_val_auroc": 0.7,
                "largest_batch": {"patients": b, "events": 300 * b, "sets": 100 * b}, "lr": 1e-3,
            }
        )
    )  # fmt: skip
    lines = []
    for epoch in (1, 2):
        for s in range(1, steps_per_epoch + 1):
            step = (epoch - 1) * steps_per_epoch + s
            lines.append({"kind": "step", "epoch": epoch, "step": step, "loss": 3.0 / step, "recon": 1.0, "kl": 0.1,
                          "ce": 0.6, "beta": 0.0, "lr": 1e-3, "recon_weight": 1.0, "pred_weight": 0.1,
                          "patients_per_s": patients_per_s, "events_per_s": 1.0, "fill_ratio": 1.0,
                          "batch_patients": b, "batch_events": 300 * b})  # fmt: skip
        lines.append({"kind": "epoch", "epoch": epoch, "step": epoch * steps_per_epoch, "train_loss": 1.0,
                      "val_loss": 1.1, "val_auroc": 0.6 + 0.05 * epoch, "val_auprc": 0.5, "wall_time_s": 10.0 * epoch})  # fmt: skip
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")

    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], 100)
    probabilities = 1 / (1 + np.exp(-(auroc_shift * (labels - 0.5) + rng.standard_normal(200))))
    ids = [f"P{i}" for i in range(200)]
    (results / "eval").mkdir(exist_ok=True)
    write_predictions(results / "eval" / f"bs{b}_predictions.parquet", ids, labels, probabilities)
    evaluation = {
        "batch_size": b,
        **classification_metrics(labels, probabilities, 200, 0),
        "recon": 0.5 + b / 100,
        "kl": 0.2 + b / 1000,
        "active_units": {"active": 10 + b, "units": 32, "threshold": 0.01, "sets": 999},
        "inference": {"patients_per_s": 4 * patients_per_s, "events_per_s": 1.0, "time_s": 1.0, "batches": 10},
        "memory": {"peak_rss_mb": rss * 0.8, "cuda_max_allocated_mb": gpu and gpu / 4, "cuda_max_reserved_mb": gpu and gpu / 2},
        "largest_batch": {"patients": b, "events": 10, "sets": 5},
        "device": "cpu",
    }
    (results / "eval" / f"bs{b}.json").write_text(json.dumps(evaluation))

    bench = results / "benchmarks"
    (bench / "train").mkdir(parents=True, exist_ok=True)
    (bench / "evaluate").mkdir(parents=True, exist_ok=True)
    # training record complete; evaluation record without memory samples (short job)
    (bench / "train" / f"bs{b}.tsv").write_text(BENCHMARK_HEADER + f"{1000.0 / patients_per_s:.2f}\t0:00:10\t{rss + 5:.2f}\t1\t1\t1\t0\t0\t90\t10\n")
    (bench / "evaluate" / f"bs{b}.tsv").write_text(BENCHMARK_HEADER + "2.51\t0:00:02\t-\t-\t-\t-\tNA\tNA\t-\t-\n")


def build_results(tmp_path: Path, batch_sizes=(1, 2, 4), cuda: bool = False) -> Path:
    results = tmp_path / "results"
    speeds = {1: 10.0, 2: 25.0, 4: 20.0, 8: 30.0}
    shifts = {1: 4.0, 2: 0.2, 4: 3.0, 8: 3.0}  # bs2 far worse: CIs must not overlap with bs1
    for b in batch_sizes:
        gpu = 300.0 * b if cuda else None
        write_run(results, b, patients_per_s=speeds[b], auroc_shift=shifts[b], rss=500.0 + 40 * b, seed=b, gpu=gpu)
        rc = memory.main(
            [
                "--batch-size", str(b),
                "--train-summary", str(results / "runs" / f"bs{b}" / "metrics.json"),
                "--train-benchmark", str(results / "benchmarks" / "train" / f"bs{b}.tsv"),
                "--eval-metrics", str(results / "eval" / f"bs{b}.json"),
                "--eval-benchmark", str(results / "benchmarks" / "evaluate" / f"bs{b}.tsv"),
                "--out", str(results / "memory" / f"bs{b}.json"),
            ]
        )  # fmt: skip
        assert rc == 0
    (results / "qc.json").write_text(
        json.dumps({"rows_in": 73600, "rows_kept": 73500, "rows_dropped": {"duplicate_row": 60, "negative_time": 40},
                    "by_split": {"train": {"patients": 40, "events": 12000, "sets": 4000},
                                 "valid": {"patients": 5, "events": 1500, "sets": 500},
                                 "test": {"patients": 200, "events": 60000, "sets": 20000}}})
    )  # fmt: skip
    (results / "shards").mkdir()
    (results / "shards" / "index.json").write_text(json.dumps({"vocab_size": 40}))
    return results


def run_report(tmp_path: Path, results: Path, batch_sizes) -> str:
    out = tmp_path / "reports" / "batch_comparison.md"
    settings = json.dumps({"train": {"batch_sizes": list(batch_sizes)}, "evaluate": {"bootstrap_resamples": 200, "seed": 0}})
    rc = report.main(["--settings", settings, "--results", str(results), "--batch-sizes", *map(str, batch_sizes), "--out", str(out)])
    assert rc == 0
    return out.read_text()


def section_table(text: str, heading: str) -> pd.DataFrame:
    """The first Markdown table under `## heading`, as strings."""
    body = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def ci(cell: str) -> list[float]:
    match = re.fullmatch(r"\[(-?[\d.]+), (-?[\d.]+)\]", cell)
    assert match, cell
    return [float(match.group(1)), float(match.group(2))]


def shown(cell: str, value) -> bool:
    """Whether a report cell is `value` (a number or a [low, high] CI) as the report rounds it.

    Compares against the value formatted to the cell's own decimals, so a value that lands
    on a rounding boundary cannot make the check flaky the way a tolerance can.
    """
    if isinstance(value, (list, tuple)):
        return ci(cell) == [float(f"{v:.3f}") for v in value]
    text = cell.rstrip("x")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return text == f"{value:.{decimals}f}"


# -- memory ---------------------------------------------------------------------------


def test_benchmark_tsv_missing_values_become_null(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text(BENCHMARK_HEADER + "2.51\t0:00:02\t-\t-\t-\t-\tNA\tNA\t-\t-\n")
    assert memory.read_benchmark(path) == {"max_rss_mb": None, "wall_s": 2.51, "records": 1}
    path.write_text(BENCHMARK_HEADER + "4.00\t0:00:04\t100.5\t1\t1\t1\t0\t0\t1\t1\n" + "2.00\t0:00:02\t300.25\t1\t1\t1\t0\t0\t1\t1\n" + "3.00\t0:00:03\tNA\t1\t1\t1\t0\t0\t1\t1\n")
    assert memory.read_benchmark(path) == {"max_rss_mb": 300.25, "wall_s": 3.0, "records": 3}


def test_benchmark_tsv_without_columns_is_an_input_error(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match=r"b\.tsv.*'s'"):
        memory.read_benchmark(path)


def test_memory_report_fields(tmp_path):
    results = build_results(tmp_path, (1, 4))
    mem = json.loads((results / "memory" / "bs4.json").read_text())
    train = json.loads((results / "runs" / "bs4" / "metrics.json").read_text())
    assert mem["batch_size"] == 4 and mem["device"] == "cpu"
    assert mem["train"]["peak_rss_mb"] == train["peak_rss_mb"] == 660.0
    assert mem["train"]["peak_rss_mb_per_patient"] == pytest.approx(660.0 / 4)
    assert mem["train"]["benchmark"] == {"max_rss_mb": 665.0, "wall_s": 50.0, "records": 1}
    assert mem["eval"]["peak_rss_mb"] == pytest.approx(660.0 * 0.8)
    assert mem["eval"]["benchmark"]["max_rss_mb"] is None and mem["eval"]["benchmark"]["wall_s"] == 2.51
    assert mem["train"]["cuda_max_allocated_mb"] is None and mem["train"]["cuda_max_allocated_mb_per_patient"] is None
    assert mem["largest_batch"]["train"] == {"patients": 4, "events": 1200, "sets": 400}


def test_memory_rejects_mismatched_batch_size(tmp_path):
    results = build_results(tmp_path, (1, 2))
    with pytest.raises(InputError, match=r"bs2.*metrics\.json.*batch_size is 2, expected 1"):
        memory.main(
            ["--batch-size", "1", "--train-summary", str(results / "runs" / "bs2" / "metrics.json"),
             "--train-benchmark", str(results / "benchmarks" / "train" / "bs1.tsv"),
             "--eval-metrics", str(results / "eval" / "bs1.json"),
             "--eval-benchmark", str(results / "benchmarks" / "evaluate" / "bs1.tsv"), "--out", str(tmp_path / "m.json")]
        )  # fmt: skip
    assert not (tmp_path / "m.json").exists()


# -- the report -------------------------------------------------------------------------


def test_report_rows_equal_json_outputs(tmp_path):
    sizes = (1, 2, 4)
    results = build_results(tmp_path, sizes)
    text = run_report(tmp_path, results, sizes)

    speed = section_table(text, "Training speed")
    quality = section_table(text, "Test-set quality")
    mem = section_table(text, "Memory")
    for table in (speed, quality, mem):
        assert table["batch size"].astype(int).tolist() == list(sizes)  # one row per batch size, in order

    base = json.loads((results / "runs" / "bs1" / "metrics.json").read_text())
    for i, b in enumerate(sizes):
        train = json.loads((results / "runs" / f"bs{b}" / "metrics.json").read_text())
        evaluation = json.loads((results / "eval" / f"bs{b}.json").read_text())
        mem_json = json.loads((results / "memory" / f"bs{b}.json").read_text())
        row = speed.iloc[i]
        assert shown(row["patients/s"], train["patients_per_s"])
        assert shown(row["events/s"], train["events_per_s"])
        assert shown(row["relative speed"], train["patients_per_s"] / base["patients_per_s"])
        assert shown(row["event-slot fill"], train["fill_ratio"])
        assert shown(row["wall time (s)"], train["wall_time_s"])
        assert int(row["epochs"]) == train["epochs"] and int(row["steps"]) == train["steps"]
        row = quality.iloc[i]
        assert shown(row["AUROC"], evaluation["auroc"])
        assert shown(row["AUROC 95% CI"], evaluation["auroc_ci"])
        assert shown(row["AUPRC"], evaluation["auprc"])
        assert shown(row["AUPRC 95% CI"], evaluation["auprc_ci"])
        assert shown(row["Brier"], evaluation["brier"])
        assert shown(row["reconstruction"], evaluation["recon"])
        assert shown(row["KL"], evaluation["kl"])
        assert row["active units"] == f"{evaluation['active_units']['active']} / 32"
        row = mem.iloc[i]
        assert shown(row["train peak RSS (MiB)"], mem_json["train"]["peak_rss_mb"])
        assert shown(row["increment over batch size 1 (MiB)"], 40.0 * (b - 1))
        assert shown(row["per patient (MiB)"], mem_json["train"]["peak_rss_mb_per_patient"])
        assert shown(row["Snakemake max_rss (MiB)"], mem_json["train"]["benchmark"]["max_rss_mb"])
        assert row["largest batch: patients / sets / events"] == f"{b} / {100 * b} / {300 * b}"
    assert "GPU allocated" not in text  # a CPU run has no GPU columns

    claim = section_table(text, "The original guide's claim")
    assert claim["batch size"].tolist() == ["1", "4", "8", "16"]
    assert claim["claimed relative speed"].tolist() == ["1.0x", "2.5x", "4.0x", "6.0x"]
    assert claim.loc[1, "measured relative speed (vs 1)"] == "2.00x"
    assert claim.loc[2, "measured relative speed (vs 1)"] == "not run"


def test_report_figures_exist_and_are_linked(tmp_path):
    results = build_results(tmp_path, (1, 2))
    text = run_report(tmp_path, results, (1, 2))
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(f"figures/{name}" for name in report.FIGURES.values())
    for link in links:
        png = (tmp_path / "reports" / link).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_summary_reflects_the_numbers(tmp_path):
    results = build_results(tmp_path, (1, 2, 4))
    text = run_report(tmp_path, results, (1, 2, 4))
    summary = text.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
    # bs2 is fastest (25 vs 10 patients/s): 2.50x; the guide claimed nothing for 2
    assert "Fastest training: batch size 2 at 25.00 patients/s, 2.50x batch size 1." in summary
    assert "The largest batch size, 4, reaches 2.00x" in summary
    e1, e2 = (json.loads((results / "eval" / f"bs{b}.json").read_text()) for b in (1, 2))
    assert e1["auroc_ci"][0] > e2["auroc_ci"][1]  # the fixture separates them
    assert f"Test AUROC of batch size 1 ({e1['auroc']:.3f}, CI" in summary
    assert "than that of batch size 2" in summary
    assert "batch size(s) 2." in summary  # bs2's CI includes chance


def test_summary_when_cis_overlap_and_no_batch_size_1(tmp_path):
    results = build_results(tmp_path, (4, 8))
    text = run_report(tmp_path, results, (4, 8))
    summary = text.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
    assert "Fastest training: batch size 8 at 30.00 patients/s, 1.50x batch size 4." in summary
    assert "Test AUROC: the 95% confidence intervals of all batch sizes overlap" in summary
    assert "Batch size 1 was not run: relative speed is against the smallest batch size, 4." in text
    speed = section_table(text, "Training speed")
    assert speed["relative speed"].tolist() == ["1.00x", "1.50x"]


def test_cuda_run_reports_gpu_memory(tmp_path):
    results = build_results(tmp_path, (1, 4), cuda=True)
    text = run_report(tmp_path, results, (1, 4))
    mem = section_table(text, "Memory")
    for i, b in enumerate((1, 4)):
        mem_json = json.loads((results / "memory" / f"bs{b}.json").read_text())
        assert mem_json["train"]["cuda_max_allocated_mb_per_patient"] == pytest.approx(300.0)
        row = mem.iloc[i]
        assert shown(row["train GPU allocated (MiB)"], mem_json["train"]["cuda_max_allocated_mb"])
        assert shown(row["GPU increment over batch size 1 (MiB)"], 300.0 * (b - 1))
        assert shown(row["train GPU reserved (MiB)"], mem_json["train"]["cuda_max_reserved_mb"])
        assert shown(row["eval GPU allocated (MiB)"], mem_json["eval"]["cuda_max_allocated_mb"])
    # the GPU's memory is what limits the batch size: summary and claim table use it
    assert "Peak training memory (GPU allocated) goes from 300 MiB at batch size 1 to 1200 MiB at batch size 4." in text
    claim = section_table(text, "The original guide's claim")
    assert claim.loc[1, "measured training peak, GPU allocated (GiB)"] == f"{1200 / 1024:.2f}"
    assert "device: cuda;" in text


def test_environment_section(tmp_path):
    results = build_results(tmp_path, (1, 2))
    text = run_report(tmp_path, results, (1, 2))
    env = text.split("## Environment\n", 1)[1]
    settings = {"train": {"batch_sizes": [1, 2]}, "evaluate": {"bootstrap_resamples": 200, "seed": 0}}
    assert report.settings_digest(settings) in env
    assert "device: cpu; CPU threads: 2; precision: fp32" in env
    assert "torch: 2.13.0+cpu" in env
    assert re.search(r"project commit: ([0-9a-f]{40}|unknown)", env)
    assert "test: 200 patients, 20000 sets, 60000 events" in env
    assert "event rows: 73600 read, 73500 kept, 100 dropped" in env
    assert "variables (train vocabulary): 40" in env


def test_missing_output_names_the_file(tmp_path):
    results = build_results(tmp_path, (1, 2))
    (results / "eval" / "bs2.json").unlink()
    out = tmp_path / "reports" / "batch_comparison.md"
    with pytest.raises(InputError, match=r"eval/bs2\.json: missing"):
        report.main(["--results", str(results), "--batch-sizes", "1", "2", "--out", str(out)])
    assert not out.exists()


def test_single_class_test_split_reports_missing_auroc(tmp_path):
    results = build_results(tmp_path, (1, 2))
    path = results / "eval" / "bs2.json"
    evaluation = json.loads(path.read_text())
    evaluation.update(auroc=None, auroc_ci=[None, None], auprc=None, auprc_ci=[None, None])
    path.write_text(json.dumps(evaluation))
    text = run_report(tmp_path, results, (1, 2))
    row = section_table(text, "Test-set quality").iloc[1]
    assert [row["AUROC"], row["AUROC 95% CI"], row["AUPRC"]] == [report.MISSING] * 3
    summary = text.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
    assert "Test AUROC" not in summary  # nothing to compare with one batch size left
