"""The data half of the pipeline under Snakemake: `shards` builds, a second run does
nothing, and a changed `shards.max_sequence_length` reruns only the shard stage and qc."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqsetvae.data.reader import ShardReader

pytestmark = pytest.mark.pipeline

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "data": {"partitions": 2, "incomplete_splits": "warn"},  # 60 patients: a valid split of 9 may be one class
    "synthetic": {"patients": 60, "variables": 8, "mean_sets": 12, "mean_events": 36, "seed": 1},
    "embedding": {"dim": 8},
    "shards": {"max_sequence_length": 40, "shard_size": 16},
}


def snakemake(tmp: Path, config: str, *args: str) -> str:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp),
        "--configfile",
        str(tmp / config),
        "--cores",
        "2",
        *args,
    ]
    result = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def planned_jobs(output: str) -> dict[str, int]:
    """The `Job stats` table of a (dry) run: {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            break
        jobs[match[1]] = int(match[2])
    jobs.pop("total", None)
    return jobs


def test_shards_target_caching_and_targeted_rerun(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    first = snakemake(tmp_path, "config.yaml", "shards")
    assert planned_jobs(first) == {
        "synthetic_data": 1,
        "splits": 1,
        "ingest": 1,
        "stats": 1,
        "embedding": 1,
        "make_shards": 1,
        "qc": 1,
        "shards": 1,
    }
    qc = json.loads((tmp_path / "results/qc.json").read_text())
    assert qc["rows_in"] == qc["rows_kept"] + sum(qc["rows_dropped"].values())
    assert qc["rows_dropped"]["truncated_sequence"] > 0
    reader = ShardReader(tmp_path / "results/shards", "train")
    assert len(reader) == qc["by_split"]["train"]["patients"] and reader.n_events.max() <= 40
    assert reader.take(np.arange(len(reader))).n_events == qc["by_split"]["train"]["events"]

    assert "Nothing to be done" in snakemake(tmp_path, "config.yaml", "shards")

    changed = {**CONFIG, "shards": {**CONFIG["shards"], "max_sequence_length": 25}}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert planned_jobs(snakemake(tmp_path, "changed.yaml", "-n", "shards")) == {"make_shards": 1, "qc": 1, "shards": 1}
    snakemake(tmp_path, "changed.yaml", "shards")
    assert json.loads((tmp_path / "results/qc.json").read_text())["rows_kept"] < qc["rows_kept"]
    assert ShardReader(tmp_path / "results/shards", "train").n_events.max() <= 25
    # an embedding setting reruns the embedding only
    changed["embedding"] = {"dim": 4}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert planned_jobs(snakemake(tmp_path, "changed.yaml", "-n", "shards")) == {"embedding": 1, "shards": 1}


def test_bench_data_runs_and_reports_rates(tmp_path, capsys):
    from seqsetvae.benchmarks import data as bench

    assert bench.main(["--events", "20000", "--no-snakemake", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(a) ingest-to-shards, in-process" in out and "events/s" in out
    result = json.loads(out.strip().splitlines()[-1])[0]
    assert result["events"] > 15000 and set(result["chain"]["seconds"]) == {
        "splits",
        "ingest",
        "stats",
        "embedding",
        "shards",
        "qc",
    }
    assert not list(tmp_path.iterdir())  # scratch removed


def run_snakemake(tmp: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp),
        "--configfile",
        str(tmp / "config.yaml"),
        "--cores",
        "1",
        *args,
    ]
    return subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=300)


def test_events_directory_takes_every_csv_file_the_readme_promises(tmp_path):
    """`.csv`, `.csv.gz` and upper-case names are all read; other files are not."""
    events = tmp_path / "events"
    events.mkdir()
    header = "patient_id,minute,variable,value\n"
    (events / "a.csv").write_text(header + "1,0,HR,80\n2,0,HR,81\n")
    with gzip.open(events / "b.csv.gz", "wt") as handle:
        handle.write(header + "3,0,HR,82\n4,0,HR,83\n5,5,HR,84\n")
    with gzip.open(events / "C.CSV.GZ", "wt") as handle:
        handle.write(header + "6,0,HR,85\n")
    (events / "D.CSV").write_text(header + "7,0,HR,86\n")
    (events / "notes.txt").write_text("not events\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,in_hospital_mortality\n" + "".join(f"{i},{i % 2}\n" for i in range(1, 8)))
    data = {"source": "files", "events": str(events), "labels": str(labels), "incomplete_splits": "warn"}
    done = run_snakemake(tmp_path, {"data": data}, "results/events")
    assert done.returncode == 0, done.stdout + done.stderr
    qc = json.loads((tmp_path / "results/events/qc.json").read_text())
    assert [Path(f).name for f in qc["events_files"]] == ["C.CSV.GZ", "D.CSV", "a.csv", "b.csv.gz"]
    assert qc["rows_in"] == qc["rows_kept"] == 7 and qc["patients_kept"] == 7
    assert "ingest: read 4 event file(s)" in (tmp_path / "results/logs/ingest.log").read_text()

    (events / "a.csv").unlink(), (events / "b.csv.gz").unlink(), (events / "C.CSV.GZ").unlink()
    (events / "D.CSV").unlink()
    failed = run_snakemake(tmp_path, {"data": data}, "-n", "results/events")
    assert failed.returncode != 0
    assert f"data.events directory {events}: no CSV files in it" in failed.stdout + failed.stderr


def test_a_failing_stage_prints_its_error_on_the_console(tmp_path):
    """The console shows the stage's `error:` line, not only "check log file(s)"; the
    log keeps it, and a configuration mapping two roles to one column is that error."""
    config = {**CONFIG, "data": {**CONFIG["data"], "columns": {"time": "value"}}}
    failed = run_snakemake(tmp_path, config, "shards")
    assert failed.returncode != 0
    message = (
        "error: configuration keys data.columns.time and data.columns.value both name column 'value' "
        "of the events file; each role needs its own column"
    )
    console = [line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("error: ")]
    assert console == [message]
    assert "seqsetvae synthetic failed; log: results/logs/synthetic_data.log" in failed.stderr
    assert message in (tmp_path / "results/logs/synthetic_data.log").read_text()
    assert not (tmp_path / "results/raw/events.csv").exists()


def test_bench_data_reads_a_meds_root(tmp_path, capsys):
    from seqsetvae.benchmarks import data as bench

    argv = ["--events", "20000", "--format", "meds", "--samples-per-subject", "3", "--no-snakemake"]
    assert bench.main([*argv, "--workdir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]
    assert result["format"] == "meds" and result["events"] > 15000
    assert list(result["chain"]["seconds"])[:3] == ["labels", "splits", "ingest"]
    chain = result["chain"]  # three prediction times per subject: rows shared by the later ones
    assert chain["samples"] == 3 * result["patients"] and chain["rows_copied"] > 0
    assert chain["events_in_shards"] == result["events"] + chain["rows_copied"]


def test_bench_train_counts_host_syncs_ops_and_data_wait(tmp_path):
    """The training step's forward + backward synchronises with the host zero times
    (segment reductions without their length check), whatever the set size."""
    from seqsetvae.benchmarks import train as bench

    small = json.dumps({"model": {"reduced_dim": 16, "latent_dim": 16, "ff_dim": 32, "levels": 1}})
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--batch-sizes",
                "2",
                "--patients",
                "4",
                "--mean-sets",
                "4",
                "--mean-events",
                "120",
                "--warmup",
                "1",
                "--threads",
                "1",
                "--settings",
                small,
                "--json",
                str(out),
            ]
        )
        == 0
    )
    (result,) = json.loads(out.read_text())["results"]
    assert result["host_syncs_per_step"] == 0
    assert result["ops_per_step"] > 100 and 0 <= result["data_wait_fraction"] < 1
    assert result["mean_set_size"] > 20  # sets of 30 on average: not capped at 15
