"""The package, tests and scripts pass the linter configured in pyproject.toml ([tool.ruff])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.importorskip("ruff")  # installed with the test extra: pip install -e '.[test]'
        command = [sys.executable, "-m", "ruff"]
    else:
        command = [ruff]
    run = subprocess.run([*command, "check", "seqsetvae", "tests", "scripts"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run = subprocess.run(
        [*command, "format", "--check", "seqsetvae", "tests", "scripts"], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


# docs/development.md: each floor imports only the floors below it
FLOORS = {
    "errors": 0,
    "io": 0,
    "settings": 0,
    "segments": 1,
    "losses": 1,
    "attention": 1,
    "batching": 1,
    "summaries": 1,
    "data": 1,
    "model": 2,
    "runtime": 3,
    "training": 4,
    "evaluation": 4,
    "reports": 5,
    "benchmarks": 5,
    "cli": 6,
}


def _unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "seqsetvae"


def test_no_import_runs_up_a_floor_or_between_training_and_evaluation():
    import ast

    wrong = []
    for path in sorted((REPO / "seqsetvae").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        source = _unit(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if not name.startswith("seqsetvae.") or source == "seqsetvae":
                    continue
                target = _unit(name)
                if target != source and (FLOORS[target] > FLOORS[source] or FLOORS[target] == FLOORS[source] == 4):
                    wrong.append(f"{path.relative_to(REPO)}: {name}")
    assert wrong == []
