"""`seqsetvae bench data`: throughput and peak memory of the data stages.

For each `--events N` (default 5,000,000), in a scratch directory:
  0. `seqsetvae synthetic` writes ~N raw events (timed separately, not in the rates);
  (a) ingest-to-shards in one fresh Python process, in-process stage calls:
      splits, ingest, stats, embedding, shards, qc (imports excluded from the time);
  (b) `snakemake --cores C shards` as a whole from an empty results directory on the
      same raw CSVs (data.source: files): process start-ups and every rule included.
It prints events/s and peak RSS of both (the child's own getrusage for (a); for (b)
wait4's rusage of snakemake, which covers its waited-for children, so the largest
job). Two sizes (e.g. `--events 2500000 10000000`) show how peak memory scales.
With `--format meds` the raw events are first rewritten as a MEDS root and a task's
labels (not timed), and (a) starts with `seqsetvae labels` and reads the MEDS root;
`--samples-per-subject K` gives the task K prediction times per subject (at 1/K, 2/K,
.., 1 of its record), so a row is written once per sample that holds it: the events
in the shards, their bytes and the peak memory then show what sharing history costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MEAN_EVENTS = 300  # per patient, the synthetic default


def _run(command: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB of the process tree, output) of a command.

    This Python's bin directory goes first on PATH, as in an activated virtual
    environment, so that jobs run the `seqsetvae` script directly and not through a
    version-manager shim (pyenv's adds ~0.2 s to every job).
    """
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return wall, usage.ru_maxrss / 1024, output


def write_meds(raw: Path, samples_per_subject: int = 1) -> None:
    """raw/events.csv and raw/labels.csv as a MEDS root (raw/meds) and a task's labels
    (raw/task.parquet: prediction times at k/K of each patient's record, k = 1..K; K = 1:
    its last event), vectorised."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    events = pacsv.read_csv(raw / "events.csv")
    labels = pacsv.read_csv(raw / "labels.csv")
    subject = pc.cast(events["patient_id"], pa.int64())
    admission = pc.multiply(subject, 86_400_000_000)  # one day apart, from 1970
    time = pc.add(admission, pc.cast(pc.multiply(events["minute"], 60_000_000), pa.int64()))
    (raw / "meds" / "data").mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "subject_id": subject,
            "time": pc.cast(time, pa.timestamp("us")),
            "code": pc.cast(events["variable"], pa.string()),
            "numeric_value": pc.cast(events["value"], pa.float32()),
        }
    )
    pq.write_table(table, raw / "meds" / "data" / "0.parquet", row_group_size=1 << 20)
    span = table.group_by("subject_id").aggregate([("time", "min"), ("time", "max")])
    index = pc.index_in(pc.cast(labels["patient_id"], pa.int64()), value_set=span["subject_id"])
    known = pc.is_valid(index).to_numpy(zero_copy_only=False)
    at = index.to_numpy(zero_copy_only=False)[known].astype("int64")
    first = pc.cast(span["time_min"], pa.int64()).to_numpy()[at]
    last = pc.cast(span["time_max"], pa.int64()).to_numpy()[at]
    import numpy as np

    k = np.arange(1, samples_per_subject + 1)
    # whole seconds, so that the K times of a subject give K distinct sample ids
    times = first[:, None] + ((last - first)[:, None] * k[None, :] // samples_per_subject) // 1_000_000 * 1_000_000
    times[:, -1] = np.maximum(times[:, -1], last)  # the last one at the last event
    subjects = pc.cast(labels["patient_id"], pa.int64()).to_numpy()[known]
    outcome = pc.cast(labels["in_hospital_mortality"], pa.bool_()).to_numpy(zero_copy_only=False)[known]
    task = pa.table(
        {
            "subject_id": np.repeat(subjects, samples_per_subject),
            "prediction_time": pa.array(times.ravel(), pa.timestamp("us")),
            "boolean_value": np.repeat(outcome, samples_per_subject),
        }
    )
    # a record shorter than K seconds repeats a time: one row per (subject, time)
    task = task.group_by(["subject_id", "prediction_time"]).aggregate([("boolean_value", "max")])
    pq.write_table(task.rename_columns(["subject_id", "prediction_time", "boolean_value"]), raw / "task.parquet")


def chain(workdir: Path, settings: dict, threads: int) -> dict:
    """Run (labels,) splits .. qc in this process; seconds per stage and peak RSS (MiB)."""
    from seqsetvae.data import embedding, formats, ingest, qc, shards, splits, stats

    raw, out = workdir / "raw", workdir / "chain"
    meds = settings.get("data", {}).get("format") == "meds"
    text = json.dumps(settings)
    labels = out / "labels.csv" if meds else raw / "labels.csv"
    events = raw / "meds" if meds else raw / "events.csv"
    steps = {
        "labels": lambda: formats.main(
            ["--events", str(events), "--labels", str(raw / "task.parquet"), "--out", str(labels), "--settings", text]
        ),
        "splits": lambda: splits.main(["--labels", str(labels), "--out", str(out / "splits.csv"), "--settings", text]),
        "ingest": lambda: ingest.main(
            [
                "--events",
                str(events),
                "--labels",
                str(labels),
                "--splits",
                str(out / "splits.csv"),
                "--out",
                str(out / "events"),
                "--settings",
                text,
                "--threads",
                str(threads),
            ]
        ),
        "stats": lambda: stats.main(
            [
                "--events",
                str(out / "events"),
                "--stats",
                str(out / "normalization.json"),
                "--vocab",
                str(out / "vocabulary.json"),
                "--settings",
                text,
            ]
        ),
        "embedding": lambda: embedding.main(
            ["--vocab", str(out / "vocabulary.json"), "--out", str(out / "embedding.safetensors"), "--settings", text]
        ),
        "shards": lambda: shards.main(
            [
                "--events",
                str(out / "events"),
                "--stats",
                str(out / "normalization.json"),
                "--vocab",
                str(out / "vocabulary.json"),
                "--out",
                str(out / "shards"),
                "--qc",
                str(out / "shards_qc.json"),
                "--settings",
                text,
            ]
        ),
        "qc": lambda: qc.main(
            [
                "--events",
                str(out / "events"),
                "--shards-qc",
                str(out / "shards_qc.json"),
                "--shards",
                str(out / "shards"),
                "--out",
                str(out / "qc.json"),
            ]
        ),
    }
    if not meds:
        del steps["labels"]
    seconds = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        seconds[name] = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    qc_json = json.loads((out / "qc.json").read_text())
    return {
        "seconds": seconds,
        "peak_rss_mb": peak,
        "rows_in": qc_json["rows_in"],
        "samples": qc_json["patients_kept"],
        "events_in_shards": qc_json["rows_kept"],
        "rows_copied": qc_json.get("rows_copied", 0),
        "shards_mb": sum(p.stat().st_size for p in (out / "shards").rglob("*") if p.is_file()) / 2**20,
        "take_us": time_take(out / "shards"),
    }


def time_take(shards_dir: Path, batch_size: int = 16, calls: int = 2000) -> dict[str, float]:
    """Microseconds per `ShardReader.take` of `batch_size` train patients: random
    patients (many shards) and a run of neighbours (length-grouped batches)."""
    import numpy as np

    from seqsetvae.data.reader import ShardReader

    reader = ShardReader(shards_dir, "train")
    batch_size = min(batch_size, len(reader))
    rng = np.random.default_rng(0)
    batches = {
        "random": [rng.choice(len(reader), batch_size, replace=False) for _ in range(calls)],
        "neighbours": [np.arange(i, i + batch_size) for i in rng.integers(0, len(reader) - batch_size + 1, calls)],
    }
    timings = {}
    for kind, indices in batches.items():
        for batch in indices[:100]:  # warm: map the files, touch the pages
            reader.take(batch)
        start = time.perf_counter()
        for batch in indices:
            reader.take(batch)
        timings[kind] = (time.perf_counter() - start) / calls * 1e6
    return timings


def bench_size(
    n_events: int, workdir: Path, cores: int, snakemake: bool, data_format: str = "csv", samples_per_subject: int = 1
) -> dict:
    patients = max(3, round(n_events / MEAN_EVENTS))
    settings = {"synthetic": {"patients": patients, "seed": 0}}
    raw = workdir / "raw"
    wall, _, _ = _run(
        [
            sys.executable,
            "-m",
            "seqsetvae.cli",
            "synthetic",
            "--settings",
            json.dumps(settings),
            "--events",
            str(raw / "events.csv"),
            "--labels",
            str(raw / "labels.csv"),
        ]
    )
    result = {"patients": patients, "generate_s": wall, "csv_mb": (raw / "events.csv").stat().st_size / 2**20}
    if data_format == "meds":
        write_meds(raw, samples_per_subject)
        settings["data"] = {"format": "meds", "events": str(raw / "meds")}
        result["format"] = "meds"

    _, peak, output = _run(
        [
            sys.executable,
            "-m",
            "seqsetvae.benchmarks.data",
            "--chain",
            str(workdir),
            "--settings",
            json.dumps(settings),
            "--cores",
            str(cores),
        ]
    )
    report = json.loads(output.strip().splitlines()[-1])
    result["events"] = report["rows_in"]
    result["chain"] = report | {"total_s": sum(report["seconds"].values())}
    shutil.rmtree(workdir / "chain")

    if snakemake:
        data = {"source": "files", "events": str(raw / "events.csv"), "labels": str(raw / "labels.csv")}
        if data_format == "meds":
            data = {
                "source": "files",
                "format": "meds",
                "events": str(raw / "meds"),
                "labels": str(raw / "task.parquet"),
            }
        config = {"data": data, "results": str(workdir / "results"), "reports": str(workdir / "reports")}
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        wall, peak, _ = _run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "-s",
                str(REPO / "Snakefile"),
                "--directory",
                str(workdir),
                "--configfile",
                str(workdir / "config.yaml"),
                "--cores",
                str(cores),
                "shards",
            ]
        )
        result["snakemake"] = {"wall_s": wall, "peak_rss_mb": peak}
        shutil.rmtree(workdir / "results")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[5_000_000], help="raw events per run")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores and ingest threads")
    parser.add_argument("--no-snakemake", action="store_true", help="time only the in-process chain")
    parser.add_argument("--format", choices=("csv", "meds"), default="csv", help="the raw events' layout")
    parser.add_argument(
        "--samples-per-subject", type=int, default=1, help="meds: prediction times per subject in the task"
    )
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--chain", default=None, help=argparse.SUPPRESS)  # internal: the (a) child
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.chain:
        print(json.dumps(chain(Path(args.chain), json.loads(args.settings), args.cores)))
        return 0

    print(f"bench data: {os.cpu_count()} CPUs visible, --cores {args.cores}; (a) in-process stages, one child")
    results = []
    for n_events in args.events:
        workdir = Path(tempfile.mkdtemp(prefix="bench-data-", dir=args.workdir))
        try:
            r = bench_size(n_events, workdir, args.cores, not args.no_snakemake, args.format, args.samples_per_subject)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        results.append(r)
        chain_s = r["chain"]["total_s"]
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in r["chain"]["seconds"].items())
        print(
            f"\n{r['events']:,} events, {r['patients']:,} patients, CSV {r['csv_mb']:.0f} MiB"
            f" (generated in {r['generate_s']:.1f}s, not counted)"
        )
        print(
            f"  (a) ingest-to-shards, in-process: {chain_s:.2f}s = {r['events'] / chain_s:,.0f} events/s,"
            f" peak RSS {r['chain']['peak_rss_mb']:.0f} MiB  [{stages}]"
        )
        c = r["chain"]
        print(
            f"  samples {c['samples']:,}; events in the shards {c['events_in_shards']:,}"
            f" ({c['rows_copied']:,} copies of rows shared by samples), shards {c['shards_mb']:.0f} MiB"
        )
        take = r["chain"]["take_us"]
        print(
            f"  reader.take of 16 train patients: {take['random']:.0f} us (random patients),"
            f" {take['neighbours']:.0f} us (neighbours in length order)"
        )
        if "snakemake" in r:
            s = r["snakemake"]
            print(
                f"  (b) snakemake --cores {args.cores} shards: {s['wall_s']:.2f}s ="
                f" {r['events'] / s['wall_s']:,.0f} events/s, peak RSS {s['peak_rss_mb']:.0f} MiB"
            )
    if len(results) > 1:
        a, b = results[0], results[-1]
        line = f"\nscaling {b['events'] / a['events']:.1f}x events: peak RSS (a) x"
        line += f"{b['chain']['peak_rss_mb'] / a['chain']['peak_rss_mb']:.2f}"
        if "snakemake" in b:
            line += f", (b) x{b['snakemake']['peak_rss_mb'] / a['snakemake']['peak_rss_mb']:.2f}"
        print(line)
    print("\n" + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
