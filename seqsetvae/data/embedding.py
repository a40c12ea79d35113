"""`seqsetvae embedding`: the frozen variable embedding table, one row per vocabulary id.

method `random` (default): a fixed Gaussian N(0, 1) vector per variable, seeded by
(embedding.seed, variable name) so that adding a variable to the vocabulary leaves the
other variables' vectors unchanged.
method `table`: rows of a CSV `Key,<d columns>` (the original research code's format:
one row per variable name), taken in vocabulary order; the table's width is the
embedding dimension.

Output: safetensors with `embedding` float32 [V, D] and metadata `variables` (JSON
list, vocabulary order), `method`, `seed`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path, read_json, tensors_sha256
from seqsetvae.settings import load_settings

KEY_COLUMN = "Key"
SHOW_MISSING = 20


def variable_seed(seed: int, name: str) -> int:
    """A 64-bit seed from (seed, variable name), stable across runs and platforms."""
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def random_table(variables: list[str], dim: int, seed: int) -> np.ndarray:
    """float32 [V, dim]: N(0, 1) rows, each from its own (seed, name) generator.

    One generator per variable (a loop over the vocabulary, not over data): it is what
    makes a variable's vector independent of which other variables exist.
    """
    table = np.empty((len(variables), dim), dtype=np.float32)
    for row, name in enumerate(variables):
        table[row] = np.random.default_rng(variable_seed(seed, name)).standard_normal(dim)
    return table


def read_table(path: str | Path, variables: list[str]) -> np.ndarray:
    """float32 [V, d]: the rows of the CSV table `path` for `variables`, in order."""
    import pandas as pd  # here, not at the top: the default (random) path runs without it

    path = Path(path)
    if not path.is_file():
        raise InputError(f"embedding table {path}: not found")
    try:
        # empty cells stay strings (not NaN), so that they are reported as bad cells
        frame = pd.read_csv(path, dtype={KEY_COLUMN: str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"embedding table {path}: not a readable CSV file ({error})") from None
    if frame.columns[0] != KEY_COLUMN or frame.shape[1] < 2:
        raise InputError(
            f"embedding table {path}: expected a header `{KEY_COLUMN},<one column per dimension>`,"
            f" found {', '.join(map(str, frame.columns[:5]))}"
        )
    keys = frame[KEY_COLUMN].str.strip()
    duplicated = keys[keys.duplicated(keep=False)]
    if len(duplicated):
        rows = (np.flatnonzero(keys.duplicated(keep=False).to_numpy()) + 1).tolist()
        listed = ", ".join(map(str, rows[:10])) + (f", ... ({len(rows)} rows)" if len(rows) > 10 else "")
        raise InputError(
            f"embedding table {path}: column {KEY_COLUMN}: duplicate key(s)"
            f" {', '.join(sorted(set(duplicated))[:10])} (rows {listed})"
        )
    position = pd.Index(keys).get_indexer(variables)
    missing = [name for name, at in zip(variables, position) if at < 0]
    if missing:
        shown = ", ".join(missing[:SHOW_MISSING])
        more = f" and {len(missing) - SHOW_MISSING} more" if len(missing) > SHOW_MISSING else ""
        raise InputError(
            f"embedding table {path}: column {KEY_COLUMN}: {len(missing)} of the {len(variables)}"
            f" vocabulary variables have no row: {shown}{more}"
        )
    cells = frame.iloc[:, 1:]
    # numeric columns parsed already; only a column with a bad cell is left as strings
    numbers = cells.apply(
        lambda column: (
            column
            if pd.api.types.is_numeric_dtype(column)
            else pd.to_numeric(column.astype(str).str.strip(), errors="coerce")
        )
    )
    bad = ~np.isfinite(numbers.to_numpy(dtype=np.float64))
    if bad.any():
        rows, columns = np.nonzero(bad)
        examples = ", ".join(
            f"row {r + 1} column {cells.columns[c]} ({str(cells.iat[r, c])!r})" for r, c in zip(rows[:5], columns[:5])
        )
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise InputError(f"embedding table {path}: non-numeric or non-finite cells: {examples}{more}")
    return numbers.to_numpy(dtype=np.float32)[position]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae embedding", description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", required=True, help="vocabulary.json (stats)")
    parser.add_argument("--out", required=True, help="embedding.safetensors to write")
    parser.add_argument("--settings", default="{}", help="config sections as JSON")
    args = parser.parse_args(argv)
    config = load_settings(args.settings)["embedding"]
    variables = read_json(args.vocab, written_by="stats")["variables"]
    if config["method"] == "table":
        if not config["table"]:
            raise InputError("configuration key embedding.table: required when embedding.method is table")
        table = read_table(config["table"], variables)
        if table.shape[1] != config["dim"]:
            print(f"embedding: the table is {table.shape[1]} wide; embedding.dim {config['dim']} is ignored")
    else:
        table = random_table(variables, config["dim"], config["seed"])
    metadata = {
        "variables": json.dumps(variables),
        "method": config["method"],
        "seed": str(config["seed"]),
        "sha256": tensors_sha256({"embedding": np.ascontiguousarray(table)}),
    }
    with atomic_path(args.out) as tmp:
        save_file({"embedding": np.ascontiguousarray(table)}, str(tmp), metadata=metadata)
    print(f"embedding: {table.shape[0]} variables x {table.shape[1]} ({config['method']})")
    return 0
