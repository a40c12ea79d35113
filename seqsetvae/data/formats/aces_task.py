"""`seqsetvae task`: a MEDS task's labels from an ACES task configuration.

    seqsetvae task --events MEDS_ROOT --task TASK.yaml --out DIR

ACES (`es-aces`, the `aces` extra) finds every trigger of the task in the data (every
admission, say) and writes one label row per prediction time, in the MEDS label schema:
the labels the `meds` format then reads (`data.labels`), several per subject. ACES runs
once per data file (`aces-cli data=single_file data.standard=meds`), so each file must
hold whole subjects, as MEDS ETLs write their shards: a subject found in two files is an
error (ACES would see two halves of one record). The output folder mirrors the data
files (`DIR/<relative path>.parquet`), written whole or not at all.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqsetvae.data.formats.meds import data_files
from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path

ACES_CLI = "aces-cli"


def check_whole_subjects(files: list[Path]) -> None:
    """InputError naming two files that share a subject (reads the subject column only)."""
    subjects, owners = [], []
    for index, path in enumerate(files):
        ids = pc.unique(pq.read_table(path, columns=["subject_id"])["subject_id"]).to_numpy()
        subjects.append(ids)
        owners.append(np.full(len(ids), index))
    ids, owner = np.concatenate(subjects), np.concatenate(owners)
    order = np.argsort(ids, kind="stable")
    twice = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(twice):
        i = twice[0]
        a, b = files[owner[order][i]], files[owner[order][i + 1]]
        raise InputError(
            f"MEDS data files {a} and {b}, column 'subject_id': subject {ids[order][i]} is in both "
            f"({len(twice)} such subjects); ACES runs per file, so each file must hold whole subjects"
        )


def write_task_labels(events: Path, task: Path, out: Path) -> dict:
    if not task.is_file():
        raise InputError(f"data.task {task}: not found (an ACES task configuration YAML)")
    cli = shutil.which(ACES_CLI)
    if cli is None:
        raise InputError(
            f"data.task {task}: needs ACES ({ACES_CLI} not found); install it with `pip install 'seqsetvae[aces]'`"
        )
    root = Path(events)
    files = data_files(root)
    check_whole_subjects(files)
    rows = subjects = 0
    with atomic_path(out, directory=True) as tmp:
        for path in files:
            target = tmp / path.relative_to(root / "data")
            target.parent.mkdir(parents=True, exist_ok=True)
            command = [
                cli,
                "data=single_file",
                f"data.path={path}",
                "data.standard=meds",
                f"config_path={task.resolve()}",
                f"cohort_dir={tmp}",
                "cohort_name=task",
                f"output_filepath={target}",
                f"log_dir={tmp / '.aces_logs'}",
            ]
            run = subprocess.run(command, capture_output=True, text=True)
            if run.returncode != 0:
                detail = (run.stderr or run.stdout).strip().splitlines()[-5:]
                raise InputError(f"data.task {task}: ACES failed on {path}:\n  " + "\n  ".join(detail))
            table = pq.read_table(target, columns=["subject_id"])
            rows += len(table)
            subjects += len(pc.unique(table["subject_id"]))
        shutil.rmtree(tmp / ".aces_logs", ignore_errors=True)
        if rows == 0:
            raise InputError(f"data.task {task}: ACES found no prediction time in {root} (no trigger matched)")
    return {"label_rows": rows, "subjects": subjects, "files": len(files)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae task", description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="the MEDS root (data.events)")
    parser.add_argument("--task", required=True, help="the ACES task configuration (data.task)")
    parser.add_argument("--out", required=True, help="folder of label Parquet files to write")
    args = parser.parse_args(argv)
    counts = write_task_labels(Path(args.events), Path(args.task), Path(args.out))
    print("task: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0
