"""CSV reading shared by the data stages: files checked up front, ids canonicalised.

Every reader here reads the columns it needs as strings and reports problems as
`InputError` naming the file and the column, so that `synthetic`, `splits` and
`ingest` agree on what a patient id is and on what counts as a number.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from seqsetvae.errors import InputError

# `200001.0` (a float column written by pandas) and `200001` are the same patient
_INTEGRAL_FLOAT = r"^([+-]?[0-9]+)\.0*$"
_DECIMAL = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_BINARY = r"^[01](\.0*)?$"
_NON_FINITE = r"^[+-]?([nN][aA][nN]|[iI][nN][fF]([iI][nN][iI][tT][yY])?)$"


# compressions pyarrow reads, by file suffix (matched in any case: `B.CSV.GZ` is gzip too)
COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}


def compression(path: str | os.PathLike) -> str | None:
    """The pyarrow codec of a file by its suffix in any case, or None (plain text)."""
    return COMPRESSION.get(Path(path).suffix.lower())


def _stream(path: Path):
    return pa.input_stream(str(path), compression=compression(path))


def canonical_ids(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Patient ids as canonical strings: stripped; `200001.0` -> `200001`; `P-17` kept."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not pa.types.is_string(ids.type):
        ids = ids.cast(pa.string())
    ids = pc.utf8_trim_whitespace(ids)
    return pc.replace_substring_regex(ids, _INTEGRAL_FLOAT, r"\1")


def dictionary_parts(strings: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(distinct strings, per-row index into them) of a string or dictionary array."""
    encoded = strings if pa.types.is_dictionary(strings.type) else pc.dictionary_encode(strings)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False)


def canonical_ids_encoded(ids: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(canonical unique-ish ids, per-row index into them), canonicalising each distinct
    raw id once instead of once per row (ids repeat hundreds of times in event files)."""
    dictionary, index = dictionary_parts(ids)
    return canonical_ids(dictionary), index


def parse_numbers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Parse decimal strings to float64 -> (values, problem codes).

    Codes: 0 fine, 1 missing (empty), 2 not numeric, 3 not finite (nan/inf).
    The common all-valid case is a single vectorised cast; only a block with a bad
    cell takes the slower regex path. A numeric array (from a Parquet or wide format)
    is taken as it is: null is missing, NaN and infinities are not finite.
    """
    if not (pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type)):
        values = pc.cast(strings, pa.float64()).to_numpy(zero_copy_only=False)
        codes = np.where(np.isfinite(values), 0, 3).astype(np.int8)
        if strings.null_count:
            codes[pc.is_null(strings).to_numpy(zero_copy_only=False)] = 1
        return values, codes
    try:
        values = pc.cast(strings, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        trimmed = pc.utf8_trim_whitespace(strings)
        numeric = pc.match_substring_regex(trimmed, _DECIMAL).to_numpy(zero_copy_only=False)
        non_finite = pc.match_substring_regex(trimmed, _NON_FINITE).to_numpy(zero_copy_only=False)
        empty = pc.utf8_length(trimmed).to_numpy(zero_copy_only=False) == 0
        safe = pc.if_else(pa.array(numeric), trimmed, pa.scalar("nan"))
        values = pc.cast(safe, pa.float64()).to_numpy(zero_copy_only=False)
        codes = np.full(len(values), 2, dtype=np.int8)
        codes[numeric] = 0
        codes[non_finite] = 3
        codes[empty] = 1
        codes[(codes == 0) & ~np.isfinite(values)] = 3  # e.g. 1e999
        return values, codes
    codes = np.zeros(len(values), dtype=np.int8)
    codes[~np.isfinite(values)] = 3
    return values, codes


def parse_labels(strings: pa.Array) -> np.ndarray:
    """0/1 labels as int8; -1 where the cell is anything else (empty, 2, "yes", ...).

    `1.0` counts as 1 (a label column written as floats); a missing label is never 0.
    """
    trimmed = pc.utf8_trim_whitespace(strings)
    valid = pc.match_substring_regex(trimmed, _BINARY).to_numpy(zero_copy_only=False)
    one = pc.starts_with(trimmed, "1").to_numpy(zero_copy_only=False)
    return np.where(valid, one.astype(np.int8), np.int8(-1)).astype(np.int8)


def check_readable(path: str | os.PathLike, what: str) -> Path:
    """The path as a Path, or InputError when it is missing, a directory or empty."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file {path}: not found")
    if path.is_dir():
        raise InputError(f"{what} file {path}: is a directory, not a CSV file")
    try:
        with open(path, "rb") as handle:
            first = handle.read(1)
    except OSError as error:
        raise InputError(f"{what} file {path}: cannot be read ({error.strerror})") from None
    if not first:
        raise InputError(f"{what} file {path}: is empty (no header line)")
    return path


def _check_columns(path: Path, what: str, found: list[str], required: dict[str, str]) -> None:
    missing = [f"{name!r} (data.columns.{role})" for role, name in required.items() if name not in found]
    if missing:
        shown = ", ".join(repr(name) for name in found[:12]) + (", ..." if len(found) > 12 else "")
        raise InputError(f"{what} file {path}: missing column {' and '.join(missing)}; the header has {shown}")


def _arrow_error(path: Path, what: str, error: Exception) -> InputError:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    message = "".join(c if c.isprintable() else "?" for c in message)
    message = message if len(message) <= 160 else message[:160] + "..."
    return InputError(f"{what} file {path}: cannot be parsed as CSV ({message})")


def _string_options(required: dict[str, str], block_size: int | None = None, dictionary: tuple[str, ...] = ()):
    columns = list(dict.fromkeys(required.values()))
    read = pacsv.ReadOptions(block_size=block_size) if block_size else pacsv.ReadOptions()
    # repetitive columns (ids, variable names) parsed straight into dictionary arrays
    as_dictionary = {required[role] for role in dictionary}
    convert = pacsv.ConvertOptions(
        include_columns=columns,
        column_types={
            name: pa.dictionary(pa.int32(), pa.string()) if name in as_dictionary else pa.string() for name in columns
        },
        strings_can_be_null=False,
    )
    return read, convert


def read_header(path: str | os.PathLike, what: str, required: dict[str, str]) -> Path:
    """Check that `path` is a readable CSV whose header has the `required` columns
    ({role: column name}); only the first block is read."""
    path = check_readable(path, what)
    try:
        reader = pacsv.open_csv(_stream(path), read_options=pacsv.ReadOptions(block_size=1 << 16))
        names = reader.schema.names
        reader.close()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError, OSError) as error:
        raise _arrow_error(path, what, error) from None
    _check_columns(path, what, names, required)
    return path


def read_table(path: str | os.PathLike, what: str, required: dict[str, str]) -> pa.Table:
    """A whole (small) CSV file's `required` columns as strings, renamed to their roles."""
    path = read_header(path, what, required)
    read, convert = _string_options(required)
    try:
        table = pacsv.read_csv(_stream(path), read_options=read, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
        raise _arrow_error(path, what, error) from None
    return pa.table({role: table[name].combine_chunks() for role, name in required.items()})


def iter_blocks(
    path: str | os.PathLike, what: str, required: dict[str, str], block_size: int, dictionary: tuple[str, ...] = ()
) -> Iterator[pa.RecordBatch]:
    """Stream a CSV file's `required` columns as string record batches of about
    `block_size` bytes, columns renamed to their roles; the `dictionary` roles come
    as dictionary arrays. The header must have been checked with `read_header`."""
    path = Path(path)
    read, convert = _string_options(required, block_size, dictionary)
    roles = list(required)
    try:
        reader = pacsv.open_csv(_stream(path), read_options=read, convert_options=convert)
        for batch in reader:
            yield pa.RecordBatch.from_arrays(
                [batch.column(batch.schema.get_field_index(required[r])) for r in roles], names=roles
            )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
        raise _arrow_error(path, what, error) from None


def row_examples(rows: np.ndarray, limit: int = 5) -> str:
    """`3, 17, 42` (1-based data row numbers) with `...` when there are more."""
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > limit else "")
