"""embedding: seeded random table (deterministic per variable), CSV table rows, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from seqsetvae.data import embedding
from seqsetvae.errors import InputError


def build(tmp_path, variables, settings, name="emb.safetensors"):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"variables": variables}))
    out = tmp_path / name
    assert embedding.main(["--vocab", str(vocab), "--out", str(out), "--settings", json.dumps(settings)]) == 0
    with safe_open(str(out), framework="numpy") as f:
        return f.get_tensor("embedding"), f.metadata()


def test_random_is_deterministic_per_seed_and_variable(tmp_path):
    a, meta = build(tmp_path, ["HR", "MAP", "SpO2"], {"embedding": {"dim": 32, "seed": 3}}, "a.safetensors")
    b, _ = build(tmp_path, ["HR", "MAP", "SpO2"], {"embedding": {"dim": 32, "seed": 3}}, "b.safetensors")
    c, _ = build(tmp_path, ["HR", "MAP", "SpO2"], {"embedding": {"dim": 32, "seed": 4}}, "c.safetensors")
    d, _ = build(tmp_path, ["ALT", "HR", "MAP", "SpO2"], {"embedding": {"dim": 32, "seed": 3}}, "d.safetensors")
    assert a.dtype == np.float32 and a.shape == (3, 32)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(d[1:], a)  # a new variable leaves the others unchanged
    assert json.loads(meta["variables"]) == ["HR", "MAP", "SpO2"] and meta["method"] == "random"
    assert abs(float(a.std()) - 1.0) < 0.3 and not np.allclose(a[0], a[1])


def test_default_dim_is_768(tmp_path):
    table, _ = build(tmp_path, ["a", "b"], {})
    assert table.shape == (2, 768)


def write_table(path, rows, header=None):
    width = len(rows[0]) - 1
    header = header or "Key," + ",".join(f"d{i}" for i in range(width))
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")


def test_table_rows_in_vocabulary_order(tmp_path):
    csv = tmp_path / "table.csv"
    write_table(csv, [["MAP", 1, 2, 3], ["unused", 9, 9, 9], ["HR", 4.5, 5, -6e-3], [" SpO2 ", 7, 8, 9]])
    settings = {"embedding": {"method": "table", "table": str(csv), "dim": 3}}
    table, meta = build(tmp_path, ["HR", "MAP", "SpO2"], settings)
    np.testing.assert_array_equal(table, np.float32([[4.5, 5, -6e-3], [1, 2, 3], [7, 8, 9]]))
    assert meta["method"] == "table"


def test_table_missing_variables_are_listed_with_file(tmp_path):
    csv = tmp_path / "table.csv"
    write_table(csv, [["HR", 1, 2]])
    variables = ["HR"] + [f"lab{i:02d}" for i in range(30)]
    with pytest.raises(InputError) as error:
        build(tmp_path, variables, {"embedding": {"method": "table", "table": str(csv)}})
    message = str(error.value)
    assert str(csv) in message and "30 of the 31 vocabulary variables have no row" in message
    assert "lab00, lab01" in message and "lab19 and 10 more" in message and "lab20" not in message
    assert not (tmp_path / "emb.safetensors").exists()


def test_table_bad_cells_and_duplicates_name_rows_and_columns(tmp_path):
    csv = tmp_path / "table.csv"
    write_table(csv, [["HR", 1, 2], ["MAP", "x1", 3], ["SpO2", 4, ""]])
    with pytest.raises(InputError, match=r"row 2 column d0 \('x1'\), row 3 column d1 \(''\)"):
        build(tmp_path, ["HR"], {"embedding": {"method": "table", "table": str(csv)}})
    write_table(csv, [["HR", 1, 2], ["MAP", 1, "inf"]])
    with pytest.raises(InputError, match=r"row 2 column d1 \('inf'\)"):
        build(tmp_path, ["HR"], {"embedding": {"method": "table", "table": str(csv)}})
    write_table(csv, [["HR", 1, 2], ["MAP", 1, 3], ["HR", 4, 5]])
    with pytest.raises(InputError, match=r"column Key: duplicate key\(s\) HR \(rows 1, 3\)"):
        build(tmp_path, ["HR"], {"embedding": {"method": "table", "table": str(csv)}})
    write_table(csv, [["HR", 1, 2]], header="name,a,b")
    with pytest.raises(InputError, match="expected a header `Key,"):
        build(tmp_path, ["HR"], {"embedding": {"method": "table", "table": str(csv)}})
    with pytest.raises(InputError, match="embedding.table: required"):
        build(tmp_path, ["HR"], {"embedding": {"method": "table"}})
    assert not (tmp_path / "emb.safetensors").exists()
