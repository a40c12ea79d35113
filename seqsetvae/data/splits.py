"""`seqsetvae splits`: assign every labelled patient to train, valid or test.

Either from the user's splits file (`data.splits`: patient id, split), or a seeded
random split by patient with `data.split_fractions`, stratified by label
(`data.stratify`) and by group when `data.columns.group` names one (the person when ids
are ICU stays: all of a group's stays land in one split). The random split sorts the
canonical patient ids before a seeded permutation, so it does not depend on the order
of the labels file's rows. Rows of the labels file whose label is not 0/1 get no split
here; `ingest` stops on them with a message naming the rows.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from seqsetvae.data import SPLITS
from seqsetvae.data.csvio import canonical_ids, parse_labels, read_table, row_examples
from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path
from seqsetvae.settings import load_settings

SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
    "tuning": "valid",
    "held_out": "test",  # MEDS's split names
}
# the labels file `seqsetvae labels` writes for the non-CSV formats
STANDARD_LABEL_COLUMNS = {"patient_id": "patient_id", "label": "label", "split": "split", "group": None}


def label_columns(data: dict) -> dict:
    """Column names of the labels file the splits and ingest stages read: the user's
    (`data.columns`) for the CSV format; the fixed ones of `seqsetvae labels` otherwise."""
    if data["format"] == "csv":
        return data["columns"]
    if data["format"] == "meds":  # a sample is (subject, prediction time): split by subject
        return {**data["columns"], **STANDARD_LABEL_COLUMNS, "group": "subject_id"}
    return {**data["columns"], **STANDARD_LABEL_COLUMNS}


def labelled_patients(labels_path: str, columns: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(sorted unique canonical ids, their 0/1 labels, their groups or None) of the
    labels file's rows with a 0/1 label (a patient's first row; `ingest` stops on
    conflicting duplicate labels). A patient with an empty group is its own group."""
    roles = {"patient_id": columns["patient_id"], "label": columns["label"]}
    if columns.get("group"):
        roles["group"] = columns["group"]
    table = read_table(labels_path, "labels", roles)
    label = parse_labels(table["label"])
    ids = canonical_ids(table["patient_id"]).to_numpy(zero_copy_only=False).astype(str)
    keep = (label >= 0) & (ids != "")
    if not keep.any():
        raise InputError(f"labels file {labels_path}, column {columns['label']!r}: no patient with a 0/1 label")
    unique, first = np.unique(ids[keep], return_index=True)
    if "group" not in roles:
        return unique, label[keep][first], None
    group = pc.utf8_trim_whitespace(table["group"]).to_numpy(zero_copy_only=False).astype(str)
    group = np.where(group == "", np.char.add("\x00", ids), group)[keep]  # own group, never a real name
    rows = np.flatnonzero(keep)
    order = np.lexsort((group, ids[keep]))
    same_id = ids[keep][order][1:] == ids[keep][order][:-1]
    differ = np.flatnonzero(same_id & (group[order][1:] != group[order][:-1]))
    if len(differ):
        i = order[differ[0]]
        raise InputError(
            f"labels file {labels_path}: rows {rows[order[differ[0]]] + 1} and {rows[order[differ[0] + 1]] + 1}, "
            f"column {columns['group']!r}: patient {str(ids[keep][i])!r} is in two groups"
        )
    return unique, label[keep][first], group[first]


def split_problems(split: np.ndarray, label: np.ndarray, source: str) -> list[str]:
    """What makes the split unusable for a training run: a split without patients, or a
    valid or test split of one class (its AUROC is undefined). Found here, not after
    training, where only evaluation would notice."""
    problems = []
    for name in SPLITS:
        in_split = split == name
        positives = int(label[in_split].sum())
        if not in_split.any():
            problems.append(f"{source}: the {name} split has no patients")
        elif name != "train" and positives in (0, int(in_split.sum())):
            only = "positives" if positives else "negatives"
            problems.append(
                f"{source}: all {int(in_split.sum())} patients of the {name} split are {only}, "
                "so its AUROC and AUPRC are undefined"
            )
    return problems


def _largest_remainder(share: np.ndarray, n: int) -> np.ndarray:
    counts = np.floor(share * n).astype(np.int64)
    remainder_order = np.argsort(-(share * n - counts), kind="stable")
    counts[remainder_order[: n - counts.sum()]] += 1
    return counts


def random_split(
    patient_ids: np.ndarray,
    fractions: dict,
    seed: int,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Split names for sorted `patient_ids`, seeded.

    The units drawn are groups (each patient its own group when `groups` is None), so
    a group's patients always share a split. With `labels`, the draw is stratified:
    units with a positive patient and units without are split separately, each by
    exact counts (largest remainder), so every split's label rate is that of the cohort
    to within one patient (for singleton groups).
    """
    share = np.array([fractions[name] for name in SPLITS], dtype=np.float64)
    if abs(share.sum() - 1.0) > 1e-6:
        raise InputError(f"configuration key data.split_fractions: fractions sum to {share.sum():g}, not 1")
    n = len(patient_ids)
    units, unit_of = np.unique(groups, return_inverse=True) if groups is not None else (patient_ids, np.arange(n))
    unit_size = np.bincount(unit_of, minlength=len(units))
    stratum = np.zeros(len(units), dtype=np.int64)
    if labels is not None:
        stratum = (np.bincount(unit_of, weights=labels, minlength=len(units)) > 0).astype(np.int64)
    rng = np.random.default_rng(seed)
    unit_split = np.empty(len(units), dtype=np.int64)
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)[rng.permutation(int((stratum == s).sum()))]
        # a unit goes to the split whose patient range its first patient falls in
        starts = np.cumsum(unit_size[members]) - unit_size[members]
        bounds = np.cumsum(_largest_remainder(share, int(unit_size[members].sum())))
        unit_split[members] = np.searchsorted(bounds, starts, side="right")
    return np.array(SPLITS)[np.minimum(unit_split[unit_of], len(SPLITS) - 1)]


def check_group_splits(
    split: np.ndarray, groups: np.ndarray | None, patient_ids: np.ndarray, source: str, column: str
) -> None:
    """InputError when one group's patients were given two different splits."""
    if groups is None or len(groups) == 0:
        return
    order = np.lexsort((split, groups))
    g, s = groups[order], split[order]
    bad = np.flatnonzero((g[1:] == g[:-1]) & (s[1:] != s[:-1]))
    if len(bad):
        i, j = order[bad[0]], order[bad[0] + 1]
        raise InputError(
            f"{source}: group {str(groups[i])!r} (labels column {column!r}) is in two splits: patient "
            f"{str(patient_ids[i])!r} in {split[i]} and patient {str(patient_ids[j])!r} in {split[j]}; "
            "a group's patients must share one split"
        )


def user_split(splits_path: str, columns: dict, patient_ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """Split names for `patient_ids` from the user's splits file, and counts."""
    table = read_table(splits_path, "splits", {"patient_id": columns["patient_id"], "split": columns["split"]})
    ids = canonical_ids(table["patient_id"]).to_numpy(zero_copy_only=False).astype(str)
    raw = pc.utf8_lower(pc.utf8_trim_whitespace(table["split"]))
    index = pc.index_in(raw, value_set=pa.array(list(SPLIT_ALIASES)))
    bad = np.flatnonzero(pc.is_null(index).to_numpy(zero_copy_only=False))
    if len(bad):
        names = sorted(set(table["split"].take(pa.array(bad[:20])).to_pylist()))
        raise InputError(
            f"splits file {splits_path}: rows {row_examples(bad + 1)}, column {columns['split']!r}: "
            f"unknown split name(s) {', '.join(map(repr, names))} (expected train, valid or test)"
        )
    canonical_split = np.array(list(SPLIT_ALIASES.values()))[index.to_numpy(zero_copy_only=False)]
    empty = np.flatnonzero(ids == "")
    if len(empty):
        raise InputError(
            f"splits file {splits_path}: rows {row_examples(empty + 1)}, column {columns['patient_id']!r}: "
            "empty patient id"
        )
    # duplicate patients: fine when they agree, an error when they do not
    order = np.lexsort((canonical_split, ids))
    ids, canonical_split, rows = ids[order], canonical_split[order], order + 1
    same_id = ids[1:] == ids[:-1]
    conflict = same_id & (canonical_split[1:] != canonical_split[:-1])
    if conflict.any():
        first = np.flatnonzero(conflict)[:5]
        details = "; ".join(
            f"patient {str(ids[i])!r} (rows {min(rows[i], rows[i + 1])} and {max(rows[i], rows[i + 1])})" for i in first
        )
        raise InputError(
            f"splits file {splits_path}, column {columns['split']!r}: patients with conflicting splits: {details}"
        )
    keep = np.concatenate([[True], ~same_id])
    ids, canonical_split = ids[keep], canonical_split[keep]
    position = np.searchsorted(ids, patient_ids)
    found = (position < len(ids)) & (ids[np.minimum(position, len(ids) - 1)] == patient_ids)
    if not found.all():
        missing = patient_ids[~found]
        raise InputError(
            f"splits file {splits_path}, column {columns['patient_id']!r}: {len(missing)} labelled patient(s) "
            f"have no split, e.g. {', '.join(missing[:5])}"
        )
    counts = {
        "splits_file_rows": int(len(table)),
        "splits_file_duplicate_rows": int(same_id.sum()),
        "splits_file_patients_without_label": int(len(ids) - len(patient_ids)),
    }
    return canonical_split[position], counts


def make_splits(settings: dict, labels_path: str, splits_path: str | None, out: str) -> dict:
    data = settings["data"]
    columns = label_columns(data)
    patient_ids, label, groups = labelled_patients(labels_path, columns)
    if splits_path:
        split, counts = user_split(splits_path, columns, patient_ids)
        source = f"splits file {splits_path}"
        check_group_splits(split, groups, patient_ids, source, columns["group"])
    else:
        stratify = label if data["stratify"] else None
        split, counts = random_split(patient_ids, data["split_fractions"], data["split_seed"], stratify, groups), {}
        fractions = ", ".join(f"{name} {data['split_fractions'][name]:g}" for name in SPLITS)
        how = (", stratified by label" if data["stratify"] else "") + (
            f", by group ({columns['group']})" if groups is not None else ""
        )
        source = f"random split of the {len(patient_ids)} labelled patients of {labels_path} ({fractions}{how})"
    problems = split_problems(split, label, source)
    if problems and data["incomplete_splits"] == "error":
        raise InputError(
            "; ".join(problems) + ". Use a larger cohort, other data.split_fractions or another splits file; "
            "data.incomplete_splits: warn accepts this (the data stages run, training or evaluation cannot)"
        )
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    with atomic_path(out) as tmp:
        table = pa.table({"patient_id": pa.array(patient_ids, pa.string()), "split": pa.array(split, pa.string())})
        pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(quoting_style="needed"))
    counts.update({name: int((split == name).sum()) for name in SPLITS})
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae splits", description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True, help="labels CSV (patient id, 0/1 label)")
    parser.add_argument("--splits", default=None, help="splits CSV (patient id, split); default data.splits")
    parser.add_argument("--out", required=True, help="splits.csv to write (patient_id,split)")
    parser.add_argument("--settings", default="{}", help="JSON config sections (data)")
    args = parser.parse_args(argv)
    settings = load_settings(args.settings)
    counts = make_splits(settings, args.labels, args.splits or settings["data"]["splits"], args.out)
    print("splits: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0
