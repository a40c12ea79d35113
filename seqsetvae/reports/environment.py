"""Where the numbers came from: commit, settings, machines and dataset of a report, and
its Environment section."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from seqsetvae.errors import InputError
from seqsetvae.reports.study import read_object
from seqsetvae.reports.tables import MISSING


def describe(runs, settings: dict) -> dict:
    """The study's `environment` object for the loaded runs and the settings as given."""
    return {
        "commit": git_commit(),
        "settings_digest": settings_digest(settings),
        "torch": _unique(r.train.get("torch_version") for r in runs),
        "threads": _unique(r.train.get("threads") for r in runs),
        "precision": _unique(r.train.get("precision") for r in runs),
        "machines": machines(runs),
    }


def git_commit() -> str:
    """The project's git commit (with a mark for uncommitted changes), or "unknown"."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def settings_digest(settings: dict) -> str:
    """sha256 of the settings JSON in canonical form (sorted keys, no spaces)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dataset(results: Path, unit: str = "patient") -> dict:
    """Rows and per-split patients, sets and events (qc.json), vocabulary size (shards
    index); with the bootstrap unit `subject`, the subjects of each split's samples too."""
    qc = read_object(results / "qc.json")
    index_path = results / "shards" / "index.json"
    index = read_object(index_path) if index_path.exists() else {}
    by_split = qc.get("by_split") or {}
    if not by_split:
        raise InputError(f"{results / 'qc.json'}: no 'by_split' counts")
    if unit == "subject":  # a MEDS task: samples are (subject, prediction time)
        from seqsetvae.data.reader import ShardReader
        from seqsetvae.evaluation.metrics import cluster_of_ids

        by_split = {
            split: {
                **counts,
                "subjects": int(len(set(cluster_of_ids(ShardReader(results / "shards", split).patient_ids)))),
            }
            for split, counts in by_split.items()
        }
    return {
        "rows_in": qc.get("rows_in"),
        "rows_kept": qc.get("rows_kept"),
        "rows_dropped": sum((qc.get("rows_dropped") or {}).values()),
        "vocab_size": index.get("vocab_size"),
        "by_split": by_split,
    }


def machines(runs) -> list[dict]:
    """The distinct machines the runs trained on (host, CPU, GPU, CUDA, driver), each
    with its runs, and whether `train.device: auto` fell back to the CPU there."""
    found: dict[str, dict] = {}
    for run in runs:
        machine = run.train.get("machine") or {}
        key = {k: machine.get(k) for k in ("host", "cpu", "gpu", "gpus_visible", "cuda", "driver")}
        entry = found.setdefault(json.dumps(key, sort_keys=True), {**key, "runs": [], "auto_fell_back_to_cpu": False})
        entry["runs"].append(f"bs{run.batch_size}/seed{run.seed}")
        if run.train.get("device_requested") == "auto" and run.train.get("device") == "cpu":
            entry["auto_fell_back_to_cpu"] = True
    return list(found.values())


def _machine_line(machine: dict) -> str:
    gpu = (
        "no GPU"
        if not machine.get("gpu")
        else (
            f"GPU {machine['gpu']} ({machine.get('gpus_visible')} visible), CUDA {machine.get('cuda')}, driver {machine.get('driver')}"
        )
    )
    fallback = "; train.device auto fell back to the CPU" if machine["auto_fell_back_to_cpu"] else ""
    return (
        f"  - {machine.get('host') or 'unknown host'}: CPU {machine.get('cpu') or 'unknown'}, {gpu}{fallback}: "
        f"{', '.join(machine['runs'])}"
    )


KEPT_POINT = {
    "best_auroc": "the best-validation-AUROC point",
    "lowest_cross_entropy": "the lowest-validation-cross-entropy point",
    "last": "the last validation point",
}


def kept_weights_words(protocol: dict) -> str:
    """Which weights the test split scored (train.keep_weights, train.head_refit)."""
    point = KEPT_POINT[protocol.get("keep_weights", "best_auroc")]
    refit = protocol.get("head_refit", "none") == "regression"
    return point + (", its linear head refitted on the train split (train.head_refit)" if refit else "")


def environment_lines(study: dict) -> list[str]:
    env, data = study["environment"], study["dataset"]
    lines = [
        f"- device: {', '.join(study['device'])}; torch {env['torch']}; CPU threads: {env['threads']}; precision: {env['precision']}",
        "- machines (the runs trained on each):",
        *[_machine_line(m) for m in env.get("machines", [])],
        f"- project commit: {env['commit']}",
        f"- settings digest (sha256 of the settings JSON): `{env['settings_digest']}`",
        f"- evaluation: {kept_weights_words(study['protocol'])} of each run on the test split; bootstrap "
        f"{study['bootstrap']['resamples']} resamples, seed {study['bootstrap']['seed']}, percentile 95% CIs"
        + ("; resampling subjects with all their samples" if study["bootstrap"].get("unit") == "subject" else ""),
        "- dataset (after QC and truncation):",
        f"  - event rows: {data['rows_in']} read, {data['rows_kept']} kept, {data['rows_dropped']} dropped (reasons in qc.json)",
        f"  - variables (train vocabulary): {data['vocab_size']}",
    ]
    for split in ("train", "valid", "test"):
        c = data["by_split"].get(split, {})
        who = (
            f"{c['patients']} samples of {c['subjects']} subjects"
            if "subjects" in c
            else f"{c.get('patients', MISSING)} patients"
        )
        lines.append(f"  - {split}: {who}, {c.get('sets', MISSING)} sets, {c.get('events', MISSING)} events")
    return lines


def _unique(values) -> str:
    found = sorted({str(v) for v in values if v is not None})
    return ", ".join(found) if found else "unknown"
