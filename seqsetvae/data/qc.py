"""`seqsetvae qc`: the whole row / patient / label balance of the data stages, qc.json.

Merges ingest's part (`events/qc.json`) with the shards' part (`shards_qc.json`) and
checks the balance: every raw row is either in the shards or counted under exactly one
drop reason, and the rows kept are the events actually stored in the shard files. A
broken balance is a bug in a stage, so it fails loudly (AssertionError), never quietly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seqsetvae.data import SPLITS
from seqsetvae.data.reader import map_safetensors
from seqsetvae.errors import InputError
from seqsetvae.io import read_json, write_json


def _merge(a: dict, b: dict) -> dict:
    merged = dict(a)
    for key, count in b.items():
        merged[key] = merged.get(key, 0) + count
    return merged


def _check(name: str, total: int, kept: int, dropped: dict) -> None:
    if total != kept + sum(dropped.values()):
        raise AssertionError(f"qc: {name} balance broken: {total} in != {kept} kept + dropped {dropped}")


def events_in_shards(shards_dir: Path) -> dict[str, int]:
    """Events stored in each split's shard files (read from the files' headers)."""
    counts = {}
    for split in SPLITS:
        index = read_json(shards_dir / split / "index.json", written_by="make_shards")
        files = [shards_dir / split / entry["file"] for entry in index["shards"]]
        counts[split] = sum(len(map_safetensors(path)["variable_ids"]) for path in files)
    return counts


def merge_qc(ingest: dict, shards: dict, stored_events: dict[str, int]) -> dict:
    """qc.json (docs/design.md, "QC balance") from the two stages' parts."""
    if ingest["rows_kept"] != shards["rows_in"]:
        raise AssertionError(f"qc: ingest kept {ingest['rows_kept']} rows but shards read {shards['rows_in']}")
    if ingest["patients_kept"] != shards["patients_in"]:
        raise AssertionError(
            f"qc: ingest kept {ingest['patients_kept']} patients but shards read {shards['patients_in']}"
        )
    rows_dropped = _merge(ingest["rows_dropped"], shards["rows_dropped"])
    patients_dropped = _merge(ingest["patients_dropped"], shards["patients_dropped"])
    labels_dropped = _merge(ingest["labels_dropped"], shards["patients_dropped"])
    qc = {
        "rows_in": ingest["rows_in"],
        "rows_kept": shards["rows_kept"],
        "rows_dropped": rows_dropped,
        "patients_in": ingest["patients_in"],
        "patients_kept": shards["patients_kept"],
        "patients_dropped": patients_dropped,
        "labels_in": ingest["labels_in"],
        "labels_kept": shards["patients_kept"],
        "labels_dropped": labels_dropped,
        "truncation": shards["truncation"],
        "unseen_variables": shards["unseen_variables"],
        "by_split": shards["by_split"],
    }
    qc |= {key: value for key, value in ingest.items() if key not in qc}  # ingest's details
    # a row shared by several samples (MEDS) is written, kept or dropped once per sample
    _check("row", qc["rows_in"] + ingest.get("rows_copied", 0), qc["rows_kept"], rows_dropped)
    _check("patient", qc["patients_in"], qc["patients_kept"], patients_dropped)
    _check("label", qc["labels_in"], qc["labels_kept"], labels_dropped)
    if sum(stored_events.values()) != qc["rows_kept"]:
        raise AssertionError(f"qc: the shard files hold {stored_events} events, shards_qc.json says {qc['rows_kept']}")
    for split, events in stored_events.items():
        if qc["by_split"][split]["events"] != events:
            said = qc["by_split"][split]["events"]
            raise AssertionError(f"qc: the {split} shards hold {events} events, shards_qc.json says {said}")
    return qc


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae qc", description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="validated events directory (its qc.json)")
    parser.add_argument("--shards-qc", required=True, help="shards_qc.json (shards)")
    parser.add_argument("--shards", required=True, help="shards directory, to count the stored events")
    parser.add_argument("--out", required=True, help="qc.json to write")
    args = parser.parse_args(argv)
    ingest_qc = Path(args.events) / "qc.json"
    if not ingest_qc.is_file():
        raise InputError(f"validated events directory {args.events}: no qc.json")
    qc = merge_qc(
        read_json(ingest_qc, "ingest"), read_json(args.shards_qc, "make_shards"), events_in_shards(Path(args.shards))
    )
    write_json(args.out, qc)
    dropped = ", ".join(f"{k} {v}" for k, v in qc["rows_dropped"].items() if v) or "none"
    print(f"qc: {qc['rows_kept']} of {qc['rows_in']} rows kept; dropped: {dropped}")
    return 0
