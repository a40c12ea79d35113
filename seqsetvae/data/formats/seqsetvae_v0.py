"""The original research code's layout (`seqsetvae_v0`): the migration path for its users.

    patient_ehr/{train,valid,test}/<id>.parquet   columns variable, value, minute[, set_index]
    oc.csv                                         ts_id, in_hospital_mortality
    cached.csv                                     Key + one column per embedding dimension

`data.events` is the `patient_ehr` directory, `data.labels` the `oc.csv`. A file's id is
its name without `.parquet`, canonical like every id (`200001.0.parquet` is patient
`200001` of `oc.csv`); its directory is its split. Sets are the events of one `minute`
(as everywhere in this pipeline); `set_index`, when present, is not read. `cached.csv`
is used as `embedding.method: table`, `embedding.table: .../cached.csv`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqsetvae.data.csvio import canonical_ids, read_table
from seqsetvae.data.formats import Drops, EventSource, Gather, write_csv
from seqsetvae.errors import InputError

SPLIT_DIRECTORIES = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
EVENT_COLUMNS = ("variable", "value", "minute")
LABEL_ID = "ts_id"


def patient_files(root: Path) -> tuple[list[Path], list[str], list[str]]:
    """(files, canonical ids, splits) of `patient_ehr`; one file per patient."""
    if not root.is_dir():
        raise InputError(f"seqsetvae_v0 patient_ehr directory {root}: not found (data.events)")
    files, splits = [], []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in SPLIT_DIRECTORIES):
        found = sorted(p for p in directory.iterdir() if p.name.lower().endswith(".parquet"))
        files += found
        splits += [SPLIT_DIRECTORIES[directory.name.lower()]] * len(found)
    if not files:
        raise InputError(f"seqsetvae_v0 patient_ehr directory {root}: no .parquet files under train/, valid/ or test/")
    ids = canonical_ids(pa.array([p.name[: -len(".parquet")] for p in files])).to_pylist()
    first: dict[str, int] = {}
    for i, patient in enumerate(ids):  # a loop over files
        if patient in first:
            raise InputError(
                f"seqsetvae_v0 patient_ehr directory {root}: patient {patient!r} has two files, "
                f"{files[first[patient]]} and {files[i]} (a patient belongs to one split)"
            )
        first[patient] = i
    return files, ids, splits


class SeqSetVAEv0(EventSource):
    format = "seqsetvae_v0"
    columns = {"patient_id": "file name", "time": "minute", "variable": "variable", "value": "value"}

    def __init__(self, root: Path):
        self.files, self.ids, _ = patient_files(root)
        self.drops = Drops({})

    def paths(self) -> list[Path]:
        return self.files

    def batches(self):
        gather = Gather()
        for path, patient in zip(self.files, self.ids):
            try:
                names = pq.read_schema(path).names
                missing = [c for c in EVENT_COLUMNS if c not in names]
                if missing:
                    raise InputError(
                        f"seqsetvae_v0 file {path}: missing column {', '.join(map(repr, missing))}; it has "
                        f"{', '.join(map(repr, names))}"
                    )
                table = pq.read_table(path, columns=list(EVENT_COLUMNS))
            except (pa.ArrowInvalid, OSError) as error:
                raise InputError(f"seqsetvae_v0 file {path}: cannot be read as Parquet ({error})") from None
            variable = pc.cast(table["variable"], pa.string()).combine_chunks()
            encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(pc.fill_null(variable, "")))
            codes = gather.variable_codes(encoded.dictionary.to_pylist())[
                encoded.indices.to_numpy(zero_copy_only=False)
            ]
            yield from gather.add(
                patient,
                str(path),
                _numbers(table["minute"]),
                codes,
                _numbers(table["value"]),
                np.arange(1, len(table) + 1, dtype=np.int64),
            )
        yield from gather.rest()


def _numbers(column: pa.ChunkedArray) -> pa.Array:
    """A numeric or text column as it is (null stays missing, text stays text), for the
    shared validation to name what is wrong."""
    column = column.combine_chunks()
    return (
        column
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        else pc.cast(column, pa.float64())
    )


def source(name: str, events: Path, labels_csv: Path, data: dict) -> EventSource:
    return SeqSetVAEv0(events)


def write_labels(name: str, events: Path, labels: str | None, out: str, splits_out: str | None, data: dict) -> dict:
    if not labels:
        raise InputError("data.format seqsetvae_v0: data.labels must name the oc.csv file")
    files, ids, splits = patient_files(events)
    table = read_table(labels, "labels", {"patient_id": LABEL_ID, "label": data["columns"]["label"]})
    if splits_out is None:
        raise InputError("seqsetvae labels: the seqsetvae_v0 format carries splits; give --splits-out")
    write_csv(pa.table({"patient_id": canonical_ids(table["patient_id"]), "label": table["label"]}), out)
    write_csv(pa.table({"patient_id": pa.array(ids, pa.string()), "split": pa.array(splits, pa.string())}), splits_out)
    return {"label_rows": len(table), "patient_files": len(files)}
