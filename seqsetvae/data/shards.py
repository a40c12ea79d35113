"""`seqsetvae shards`: validated events -> sets, truncation, length-sorted safetensors shards.

Policies (counted in shards_qc.json, and in qc.json's balance as dropped rows):

- unseen variables (absent from the train vocabulary): `data.unseen_variables: drop`
  drops their events (`unseen_variable`); `error` stops with the list. A patient left
  with no event is dropped (`patients_dropped.only_unseen_variables`).
- normalized_value_out_of_range: an event whose z-value does not fit float32 (a valid
  or test value many orders of magnitude outside its train variable's spread) is
  dropped; a patient left with no event is dropped as above.
- a set is one patient's events at one timestamp; sets are in time order, events in a
  set by (vocabulary id, value), an event without a value (null) after those with one.
- an event without a value gets z = 0 (the train mean): with `model.token:
  value_and_variable` its token is the variable's own direction, "this was recorded".
- `shards.max_set_size` (optional) keeps the first `max_set_size` events of a set in
  that order, i.e. the lowest vocabulary ids (`truncated_set`).
- `shards.max_sequence_length` L keeps whole sets only, the `first` (or `last`) sets
  whose events fit in L (`truncated_sequence`). When the first kept set (the last one
  for `last`) alone has more than L events it is cut to its first L events (set order):
  every patient keeps at least one set, and no patient ever exceeds L events
  (counted as `truncation.sets_cut_to_budget`).

Memory stays bounded by one partition: each partition (it holds whole patients) is
turned into flat arrays appended to scratch files beside the output; only per-patient
metadata is kept; each shard is then gathered from the memory-mapped scratch arrays.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from safetensors.numpy import save_file

from seqsetvae.data import SPLITS
from seqsetvae.data.ragged import exclusive_cumsum, ranges
from seqsetvae.data.stats import as_numpy, encode, load_normalization, load_vocabulary, partition_paths, read_partition
from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path, file_sha256, read_json, read_parquet, require_free_space, write_json
from seqsetvae.settings import load_settings

FORMAT = "seqsetvae-shards-1"
SHOW = 20
# scratch arrays of the processed events and sets, appended partition by partition
# set times float64: exact minutes (float32 merges distinct times above 2^24 minutes)
SCRATCH = {"variable_ids": np.int32, "values": np.float32, "set_times": np.float64, "set_sizes": np.int32}
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _names(names: list[str], limit: int = SHOW) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------------
# events -> sets, one partition at a time (all vectorised across its patients)


def is_sorted(patient: np.ndarray, time: np.ndarray, variable: np.ndarray, value: np.ndarray) -> bool:
    """Whether events are already in (patient, time, variable id, value) order, as
    `ingest` writes them: then no sort and no gather is needed."""
    if len(patient) < 2:
        return True
    p0, p1, t0, t1 = patient[:-1], patient[1:], time[:-1], time[1:]
    v0, v1 = variable[:-1], variable[1:]
    tail = (v1 > v0) | ((v1 == v0) & (value[1:] >= value[:-1]))
    return bool(np.all((p1 > p0) | ((p1 == p0) & ((t1 > t0) | ((t1 == t0) & tail)))))


def sort_events(patient: np.ndarray, time: np.ndarray, variable: np.ndarray, value: np.ndarray) -> np.ndarray | None:
    """The permutation ordering events by (patient, time, variable id, value), or None
    when they are in that order already.

    One stable int64 argsort of a packed (patient, time rank, variable) key when the
    three fit in 63 bits (a 4-key lexsort is ~10x slower), then a lexsort of the few
    runs with equal keys by value.
    """
    if is_sorted(patient, time, variable, value):
        return None
    times, time_rank = np.unique(time, return_inverse=True)
    counts = (int(patient.max()) + 1, len(times), int(variable.max()) + 1)
    widths = [max(count - 1, 1).bit_length() for count in counts]
    if sum(widths) > 63:
        return np.lexsort((value, variable, time, patient))
    key = (patient.astype(np.int64) << (widths[1] + widths[2])) | (time_rank.astype(np.int64) << widths[2]) | variable
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    tie = sorted_key[1:] == sorted_key[:-1]
    if tie.any():
        in_run = np.zeros(len(order), dtype=bool)
        in_run[1:] |= tie
        in_run[:-1] |= tie
        at = np.flatnonzero(in_run)
        sub = order[at]
        order[at] = sub[np.lexsort((value[sub], sorted_key[at]))]
    return order


def build_sets(
    patient: np.ndarray,
    time: np.ndarray,
    variable: np.ndarray,
    value: np.ndarray,
    max_sequence_length: int,
    truncate: str = "first",
    max_set_size: int | None = None,
) -> dict:
    """Sort events into sets and apply the set-size cap and the sequence budget.

    patient: int [E] patient codes (0..P-1); time float64 [E]; variable int [E] ids;
    value [E]. Returns the kept events in order (`variable_ids`, `values`), the kept
    sets (`set_times` float64, `set_sizes`, `set_patient`), and the counts. Vectorised
    over all patients: set boundaries from adjacent differences, budgets from running
    sums of set sizes, kept events as one gather of per-set ranges.
    """
    n = len(patient)
    order = sort_events(patient, time, variable, value)
    if order is not None:
        patient, time = patient[order], time[order]

    new_set = np.ones(n, dtype=bool)
    new_set[1:] = (patient[1:] != patient[:-1]) | (time[1:] != time[:-1])
    set_start = np.flatnonzero(new_set)
    set_sizes = np.diff(np.append(set_start, n))
    set_patient = patient[set_start]
    set_time = time[set_start]

    counts = {"sets_capped": 0, "events_capped_from_sets": 0}
    if max_set_size is not None:
        over = set_sizes > max_set_size
        capped = int((set_sizes - max_set_size)[over].sum())
        counts = {"sets_capped": int(over.sum()), "events_capped_from_sets": capped}
        set_sizes = np.minimum(set_sizes, max_set_size)
    # the budget per patient, on set sizes: events up to / from each set
    first_of_patient = np.ones(len(set_start), dtype=bool)
    first_of_patient[1:] = set_patient[1:] != set_patient[:-1]
    last_of_patient = np.ones(len(set_start), dtype=bool)
    last_of_patient[:-1] = first_of_patient[1:]
    segment = np.cumsum(first_of_patient) - 1  # patient segment of each set
    through = np.cumsum(set_sizes)  # events up to and including the set
    before = through - set_sizes
    patient_begin = before[first_of_patient][segment]
    patient_end = through[last_of_patient][segment]
    if truncate == "first":
        whole = through - patient_begin <= max_sequence_length
        boundary = first_of_patient
    else:
        whole = patient_end - before <= max_sequence_length
        boundary = last_of_patient
    cut = boundary & ~whole  # the one set kept in part: it alone exceeds the budget
    kept_size = np.where(whole, set_sizes, np.where(cut, max_sequence_length, 0))
    keep_set = kept_size > 0

    patient_events = (patient_end - patient_begin)[first_of_patient]
    counts.update(
        patients_truncated=int((patient_events > max_sequence_length).sum()),
        sets_removed=int((~keep_set).sum()),
        events_removed=int((set_sizes - kept_size).sum()),
        sets_cut_to_budget=int(cut.sum()),
    )
    # events kept: the first kept_size events of each kept set (in set order)
    if int(kept_size.sum()) == n:
        events = order
    else:
        events = ranges(set_start[keep_set], kept_size[keep_set])
        events = events if order is None else order[events]
    return {
        "variable_ids": variable if events is None else variable[events],
        "values": value if events is None else value[events],
        "set_times": set_time[keep_set],
        "set_sizes": kept_size[keep_set],
        "set_patient": set_patient[keep_set],
        "counts": counts,
    }


def read_patients(events_dir: Path) -> dict:
    """patients.parquet: `ids` (Arrow strings), `label` int64 and `split` (index into
    SPLITS) numpy arrays, row-aligned."""
    path = events_dir / "patients.parquet"
    if not path.is_file():
        raise InputError(f"validated events directory {events_dir}: no patients.parquet")
    table = read_parquet(path, "ingest", columns=["patient_id", "label", "split"])
    split = pc.fill_null(pc.index_in(table.column("split"), value_set=pa.array(SPLITS)), -1).to_numpy()
    if (split < 0).any():
        unknown = sorted(set(pc.filter(table.column("split"), pa.array(split < 0)).to_pylist()), key=str)
        raise InputError(f"patients file {path}: column split: unknown split(s) {', '.join(map(str, unknown))}")
    ids = table.column("patient_id").combine_chunks().cast(pa.string())
    return {"ids": ids, "label": table.column("label").to_numpy().astype(np.int64), "split": split.astype(np.int8)}


def lookup(values: pa.Array, names: pa.Array) -> np.ndarray:
    """int64 position of each of `values` in `names`, -1 where absent."""
    return pc.fill_null(pc.index_in(values, value_set=names), -1).to_numpy().astype(np.int64)


def process_partition(
    path: Path, vocabulary: pa.Array, mean: np.ndarray, std: np.ndarray, patients: dict, options: dict
) -> tuple[dict, dict, dict]:
    """One partition -> (processed arrays, per-patient metadata of its kept patients, counts)."""
    table = read_partition(path, ("patient_id", "time", "variable", "value", "split"))
    patient, patient_ids = encode(table.column("patient_id"))
    variable_code, variable_names = encode(table.column("variable"))
    n_patients = len(patient_ids)

    rows = lookup(patient_ids, patients["ids"])
    if (rows < 0).any():
        bad = pc.filter(patient_ids, pa.array(rows < 0)).to_pylist()
        raise InputError(f"validated events file {path}: patient(s) missing from patients.parquet: {_names(bad)}")
    # a patient's split is patients.parquet's; its events must say the same (checked on
    # each patient's first row: ingest writes one split per patient)
    first_row = np.flatnonzero(patient > np.maximum.accumulate(np.r_[-1, patient[:-1]]))
    split = patients["split"][rows]
    stated = table.column("split").take(first_row).to_numpy(zero_copy_only=False)
    disagree = np.flatnonzero(stated != np.asarray(SPLITS, dtype=object)[split])
    if len(disagree):
        bad = pc.take(patient_ids, pa.array(disagree)).to_pylist()
        raise InputError(
            f"validated events file {path}: column split: patient(s) whose split differs from"
            f" patients.parquet: {_names(bad)}"
        )

    vocab_id = lookup(variable_names, vocabulary)[variable_code]
    seen = vocab_id >= 0
    unseen_counts = np.bincount(variable_code[~seen], minlength=len(variable_names))
    unseen = {name: int(c) for name, c in zip(variable_names.to_pylist(), unseen_counts.tolist()) if c}

    value = as_numpy(table.column("value"), np.float64)
    time = as_numpy(table.column("time"), np.float64)
    variable = vocab_id.astype(np.int32)
    if not seen.all():
        patient, time, variable, value = patient[seen], time[seen], variable[seen], value[seen]
    # a valid/test value far outside its train variable's spread can give a z-value
    # float32 cannot hold: dropped and counted, never stored as inf
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        fits = (np.abs((value - mean[variable]) / std[variable]) <= FLOAT32_MAX) | np.isnan(value)
    out_of_range = int((~fits).sum())
    if out_of_range:
        patient, time, variable, value = patient[fits], time[fits], variable[fits], value[fits]
    # sets are ordered by raw value (float64), then z-normalised
    sets = build_sets(
        patient, time, variable, value, options["max_sequence_length"], options["truncate"], options["max_set_size"]
    )
    z = (sets["values"] - mean[sets["variable_ids"]]) / std[sets["variable_ids"]]
    z[np.isnan(z)] = 0.0  # an event without a value (null): z = 0, the train mean (docs/input_formats.md)

    n_sets = np.bincount(sets["set_patient"], minlength=n_patients)
    n_events = np.bincount(sets["set_patient"], weights=sets["set_sizes"], minlength=n_patients).astype(np.int64)
    kept = n_events > 0
    # scratch arrays are in patient-code order, so starts are running sums
    metadata = {
        "label": patients["label"][rows],
        "split": split,
        "n_events": n_events,
        "n_sets": n_sets,
        "event_start": exclusive_cumsum(n_events)[:-1],
        "set_start": exclusive_cumsum(n_sets)[:-1],
    }
    metadata = {key: column[kept] for key, column in metadata.items()}
    metadata["patient_id"] = pc.filter(patient_ids, pa.array(kept)).cast(pa.string())
    counts = dict(sets["counts"])
    counts.update(
        rows_in=int(table.num_rows),
        unseen_variable=int((~seen).sum()),
        normalized_value_out_of_range=out_of_range,
        patients_in=n_patients,
        only_unseen_variables=int((~kept).sum()),
    )
    arrays = {
        "variable_ids": sets["variable_ids"],
        "values": z.astype(np.float32),
        "set_times": sets["set_times"],
        "set_sizes": sets["set_sizes"],
    }
    return arrays, metadata, {"counts": counts, "unseen": unseen}


# ----------------------------------------------------------------------------------
# shards


def patient_id_bytes(patient_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of the ids, concatenated, and int64 [P+1] offsets (Arrow's layout)."""
    array = patient_ids.cast(pa.large_string())
    _, offset_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    return data[offsets[0] : offsets[-1]].copy(), offsets - offsets[0]


def select(patients: dict, rows: np.ndarray) -> dict:
    """Rows of the per-patient metadata (numpy columns, Arrow `patient_id`)."""
    rows_arrow = pa.array(rows, pa.int64())
    return {key: column.take(rows_arrow) if key == "patient_id" else column[rows] for key, column in patients.items()}


def write_split(split: str, patients: dict, scratch: Path, out: Path, shard_size: int) -> dict:
    """The split's shards (patients sorted by (n_events, patient_id)) and index.json."""
    keys = pa.table({"n_events": patients["n_events"], "patient_id": patients["patient_id"]})
    order = pc.sort_indices(keys, sort_keys=[("n_events", "ascending"), ("patient_id", "ascending")]).to_numpy()
    patients = select(patients, order)
    (out / split).mkdir()
    shards = []
    for number, begin in enumerate(range(0, len(order), shard_size)):
        chunk = slice(begin, begin + shard_size)
        n_events, n_sets = patients["n_events"][chunk], patients["n_sets"][chunk]
        events = ranges(patients["event_start"][chunk], n_events)
        sets = ranges(patients["set_start"][chunk], n_sets)
        id_bytes, id_offsets = patient_id_bytes(patients["patient_id"].slice(begin, shard_size))
        tensors = {
            "variable_ids": gather(scratch / "variable_ids.bin", np.int32, events),
            "values": gather(scratch / "values.bin", np.float32, events),
            "set_times": gather(scratch / "set_times.bin", np.float64, sets),
            "set_offsets": exclusive_cumsum(gather(scratch / "set_sizes.bin", np.int32, sets)),
            "patient_offsets": exclusive_cumsum(n_sets),
            "labels": patients["label"][chunk],
            "patient_id_bytes": id_bytes,
            "patient_id_offsets": id_offsets,
        }
        name = f"shard-{number:05d}.safetensors"
        save_file(tensors, str(out / split / name), metadata={"split": split, "format": FORMAT})
        # size and checksum: a reader notices a changed byte anywhere in the file
        shards.append(
            {
                "file": name,
                "n_patients": len(n_events),
                "n_sets": int(n_sets.sum()),
                "n_events": int(n_events.sum()),
                "bytes": (out / split / name).stat().st_size,
                "sha256": file_sha256(out / split / name),
            }
        )
    row = np.arange(len(order))
    index = {
        "split": split,
        "n_patients": len(order),
        "n_sets": int(patients["n_sets"].sum()),
        "n_events": int(patients["n_events"].sum()),
        "shards": shards,
        "patients": {
            "patient_id": patients["patient_id"].to_pylist(),
            "label": patients["label"].tolist(),
            "n_events": patients["n_events"].tolist(),
            "n_sets": patients["n_sets"].tolist(),
            "shard": (row // shard_size).tolist(),
            "row": (row % shard_size).tolist(),
        },
    }
    (out / split / "index.json").write_text(json.dumps(index) + "\n")
    return {key: index[key] for key in ("n_patients", "n_sets", "n_events")} | {"n_shards": len(shards)}


def gather(path: Path, dtype, indices: np.ndarray) -> np.ndarray:
    """scratch[indices] from a scratch file, mapped only for this gather: the mapped
    pages leave the resident set with the mapping, so memory stays per-shard."""
    if len(indices) == 0:
        return np.zeros(0, dtype=dtype)
    mapped = np.memmap(path, dtype=dtype, mode="r")
    try:
        return mapped[indices].view(np.ndarray)
    finally:
        del mapped


def make_shards(events_dir: str | Path, stats: str | Path, vocab: str | Path, out: str | Path, config: dict) -> dict:
    """Write the shards directory `out`; return the shards part of the QC balance."""
    events_dir, out = Path(events_dir), Path(out)
    options = config["shards"]
    vocabulary = load_vocabulary(vocab)
    mean, std = load_normalization(stats, vocabulary)
    patients_table = read_patients(events_dir)
    vocab_names = pa.array(vocabulary, pa.string())
    out.parent.mkdir(parents=True, exist_ok=True)
    ingest_qc = events_dir / "qc.json"
    if ingest_qc.is_file():  # the events' count, known without reading them
        rows = int(read_json(ingest_qc, written_by="ingest")["rows_kept"])
        # scratch copies and shard files both hold every event's id and value (4 + 4 bytes)
        require_free_space(out.parent, 2 * 8 * rows, f"the shards of {rows} events")

    counts: dict[str, int] = {}
    unseen: dict[str, int] = {}
    metadata = []
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-work-", dir=out.parent) as work_dir:
        work = Path(work_dir)
        files = {name: open(work / f"{name}.bin", "wb") for name in SCRATCH}
        offsets = {"event": 0, "set": 0}
        try:
            for path in partition_paths(events_dir):
                arrays, patients, found = process_partition(path, vocab_names, mean, std, patients_table, options)
                for name, dtype in SCRATCH.items():
                    np.ascontiguousarray(arrays[name], dtype=dtype).tofile(files[name])
                patients["event_start"] += offsets["event"]
                patients["set_start"] += offsets["set"]
                offsets["event"] += len(arrays["variable_ids"])
                offsets["set"] += len(arrays["set_sizes"])
                metadata.append(patients)
                for key, count in found["counts"].items():
                    counts[key] = counts.get(key, 0) + count
                for name, count in found["unseen"].items():
                    unseen[name] = unseen.get(name, 0) + count
        finally:
            for handle in files.values():
                handle.close()

        if unseen and config["data"]["unseen_variables"] == "error":
            listed = [f"{name} ({unseen[name]} events)" for name in sorted(unseen)]
            raise InputError(
                f"validated events directory {events_dir}: column variable: {len(unseen)} variable(s)"
                f" absent from the train split (vocabulary {vocab}): {_names(listed)};"
                " set data.unseen_variables: drop to drop their events"
            )
        patients = {
            key: (pa.concat_arrays if key == "patient_id" else np.concatenate)([m[key] for m in metadata])
            for key in metadata[0]
        }
        with atomic_path(out, directory=True) as tmp:
            by_split = {}
            for code, split in enumerate(SPLITS):
                mine = select(patients, np.flatnonzero(patients["split"] == code))
                by_split[split] = write_split(split, mine, work, tmp, options["shard_size"])
            write_json(
                tmp / "index.json",
                {
                    "format": FORMAT,
                    "vocab_size": len(vocabulary),
                    "splits": by_split,
                    "settings": {"shards": options, "unseen_variables": config["data"]["unseen_variables"]},
                },
            )
            rows_kept = sum(entry["n_events"] for entry in by_split.values())
            rows_dropped = {
                "unseen_variable": counts["unseen_variable"],
                "normalized_value_out_of_range": counts["normalized_value_out_of_range"],
                "truncated_set": counts["events_capped_from_sets"],
                "truncated_sequence": counts["events_removed"],
            }
            if counts["rows_in"] != rows_kept + sum(rows_dropped.values()):  # a bug: no shards then
                raise AssertionError(f"shards: {counts['rows_in']} rows in, {rows_kept} kept, dropped {rows_dropped}")

    return {
        "rows_in": counts["rows_in"],
        "rows_kept": rows_kept,
        "rows_dropped": rows_dropped,
        "unseen_variables": dict(sorted(unseen.items())),
        "patients_in": counts["patients_in"],
        "patients_kept": len(patients["patient_id"]),
        "patients_dropped": {"only_unseen_variables": counts["only_unseen_variables"]},
        "truncation": {
            key: counts[key]
            for key in (
                "patients_truncated",
                "sets_removed",
                "events_removed",
                "sets_capped",
                "events_capped_from_sets",
                "sets_cut_to_budget",
            )
        },
        "by_split": {
            split: {"patients": entry["n_patients"], "events": entry["n_events"], "sets": entry["n_sets"]}
            for split, entry in by_split.items()
        },
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae shards", description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="validated events directory (ingest)")
    parser.add_argument("--stats", required=True, help="normalization.json (stats)")
    parser.add_argument("--vocab", required=True, help="vocabulary.json (stats)")
    parser.add_argument("--out", required=True, help="shards directory to write")
    parser.add_argument("--qc", required=True, help="shards_qc.json to write")
    parser.add_argument("--settings", default="{}", help="config sections as JSON")
    args = parser.parse_args(argv)
    config = load_settings(args.settings)
    qc = make_shards(args.events, args.stats, args.vocab, args.out, config)
    write_json(args.qc, qc)
    splits = ", ".join(f"{s} {v['patients']} patients / {v['events']} events" for s, v in qc["by_split"].items())
    print(f"shards: {splits}; dropped {qc['rows_dropped']}")
    return 0
