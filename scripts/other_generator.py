#!/usr/bin/env python3
"""A second synthetic ICU generator, unlike the built-in one, to check the study's sanity.

    python scripts/other_generator.py --out work/other [--patients 1000] [--seed 0] [--run]

How it differs from `seqsetvae synthetic` (which draws a latent severity that shifts the
levels of a few variables over the whole stay, in sets of ~3 events):

- the label is a **deterioration with an onset**: a positive patient (about 25%) is
  like a negative one until a random onset (30-80% into the stay), and only afterwards
  do four variables drift (a trend, not a level) and labs get ordered three times as often;
- **measurement frequency carries signal**, and sets are larger: vitals are charted in
  blocks of 3-6, labs in panels of 8-16 values at one timestamp (as real lab panels are);
- values are **skewed**: labs are log-normal, so z-scores have heavy right tails;
- stays are more variable (10-150 sets, median about 30).

It writes the pipeline's long CSV format (`events.csv`, `labels.csv`) and a `config.yaml`
(the defaults with `data.source: files`, results and reports under `--out`); `--run` runs
`snakemake --cores 2 all` on it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
N_VITALS, N_LABS = 10, 20
DRIFTING = np.array([0, 1, N_VITALS, N_VITALS + 1])  # two vitals and two labs drift after onset


def generate(patients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    label = (rng.random(patients) < 0.25).astype(np.int64)
    n_sets = np.clip(np.round(rng.lognormal(np.log(30), 0.6, patients)), 10, 150).astype(np.int64)
    onset = rng.uniform(0.3, 0.8, patients)
    set_patient = np.repeat(np.arange(patients), n_sets)
    first = np.cumsum(n_sets) - n_sets
    position = np.arange(len(set_patient)) - np.repeat(first, n_sets)
    progress = position / np.repeat(n_sets, n_sets)
    after = (progress > onset[set_patient]) & (label[set_patient] == 1)
    gaps = np.ceil(rng.exponential(45.0, len(set_patient))).astype(np.int64)
    gaps[first] = rng.integers(0, 30, patients)
    minute = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], n_sets)

    # a set is a lab panel with probability 0.1 (0.3 after a positive's onset), else vitals
    lab = rng.random(len(set_patient)) < np.where(after, 0.3, 0.1)
    size = np.where(lab, rng.integers(8, 17, len(lab)), rng.integers(3, 7, len(lab)))
    event_set = np.repeat(np.arange(len(set_patient)), size)
    slot = np.arange(len(event_set)) - np.repeat(np.cumsum(size) - size, size)
    pool = np.where(lab[event_set], N_LABS, N_VITALS)
    start = rng.integers(0, 1000, len(set_patient))[event_set]
    variable = np.where(lab[event_set], N_VITALS, 0) + (start + slot) % pool  # distinct within a set

    patient = set_patient[event_set]
    baseline = rng.standard_normal((patients, N_VITALS + N_LABS)) * 0.4
    drift = np.zeros(len(event_set))
    drifting = np.isin(variable, DRIFTING) & after[event_set]
    since_onset = progress[event_set] - onset[patient]
    drift[drifting] = 4.0 * since_onset[drifting]  # up to ~2 standard deviations by discharge
    noise = rng.standard_normal(len(event_set)) * 0.7
    z = baseline[patient, variable] + drift + noise
    is_lab = variable >= N_VITALS
    value = np.where(is_lab, np.exp(1.0 + 0.5 * z), 80.0 + 12.0 * z)  # labs log-normal (skewed)
    names = np.array([f"vital{i:02d}" for i in range(N_VITALS)] + [f"lab{i:02d}" for i in range(N_LABS)])
    ids = np.char.add("Q", (100000 + np.arange(patients)).astype(str))
    events = pd.DataFrame(
        {
            "patient_id": ids[patient],
            "minute": minute[event_set],
            "variable": names[variable],
            "value": np.round(value, 3),
        }
    )
    labels = pd.DataFrame({"patient_id": ids, "in_hospital_mortality": label})
    return events, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", action="store_true", help="run `snakemake --cores 2 all` on it")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    events, labels = generate(args.patients, args.seed)
    events.to_csv(out / "events.csv", index=False)
    labels.to_csv(out / "labels.csv", index=False)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.update(results=str(out / "results"), reports=str(out / "reports"))
    config["data"].update(source="files", events=str(out / "events.csv"), labels=str(out / "labels.csv"))
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"{len(labels)} patients ({labels.in_hospital_mortality.mean():.1%} positive), {len(events)} events -> {out}")
    if args.run:
        return subprocess.run(
            ["snakemake", "--cores", "2", "all", "--configfile", str(out / "config.yaml")], cwd=ROOT
        ).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
