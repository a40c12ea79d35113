"""The data half of the pipeline under Snakemake: `shards` builds, a second run does
nothing, and a changed `shards.max_sequence_length` reruns only the shard stage and qc."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqsetvae.data.reader import ShardReader

pytestmark = pytest.mark.pipeline

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "data": {"partitions": 2},
    "synthetic": {"patients": 60, "variables": 8, "mean_sets": 12, "mean_events": 36, "seed": 1},
    "embedding": {"dim": 8},
    "shards": {"max_sequence_length": 40, "shard_size": 16},
}


def snakemake(tmp: Path, config: str, *args: str) -> str:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp),
               "--configfile", str(tmp / config), "--cores", "2", *args]  # fmt: skip
    result = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def planned_jobs(output: str) -> dict[str, int]:
    """The `Job stats` table of a (dry) run: {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            break
        jobs[match[1]] = int(match[2])
    jobs.pop("total", None)
    return jobs


def test_shards_target_caching_and_targeted_rerun(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    first = snakemake(tmp_path, "config.yaml", "shards")
    assert planned_jobs(first) == {
        "synthetic_data": 1, "splits": 1, "ingest": 1, "stats": 1, "embedding": 1, "make_shards": 1, "qc": 1,
        "shards": 1,
    }  # fmt: skip
    qc = json.loads((tmp_path / "results/qc.json").read_text())
    assert qc["rows_in"] == qc["rows_kept"] + sum(qc["rows_dropped"].values())
    assert qc["rows_dropped"]["truncated_sequence"] > 0
    reader = ShardReader(tmp_path / "results/shards", "train")
    assert len(reader) == qc["by_split"]["train"]["patients"] and reader.n_events.max() <= 40
    assert reader.take(np.arange(len(reader))).n_events == qc["by_split"]["train"]["events"]

    assert "Nothing to be done" in snakemake(tmp_path, "config.yaml", "shards")

    changed = {**CONFIG, "shards": {**CONFIG["shards"], "max_sequence_length": 25}}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert planned_jobs(snakemake(tmp_path, "changed.yaml", "-n", "shards")) == {
        "make_shards": 1, "qc": 1, "shards": 1
    }  # fmt: skip
    snakemake(tmp_path, "changed.yaml", "shards")
    assert json.loads((tmp_path / "results/qc.json").read_text())["rows_kept"] < qc["rows_kept"]
    assert ShardReader(tmp_path / "results/shards", "train").n_events.max() <= 25
    # an embedding setting reruns the embedding only
    changed["embedding"] = {"dim": 4}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert planned_jobs(snakemake(tmp_path, "changed.yaml", "-n", "shards")) == {"embedding": 1, "shards": 1}


def test_bench_data_runs_and_reports_rates(tmp_path, capsys):
    from seqsetvae.benchmarks import data as bench

    assert bench.main(["--events", "20000", "--no-snakemake", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(a) ingest-to-shards, in-process" in out and "events/s" in out
    result = json.loads(out.strip().splitlines()[-1])[0]
    assert result["events"] > 15000 and set(result["chain"]["seconds"]) == {
        "splits", "ingest", "stats", "embedding", "shards", "qc"
    }  # fmt: skip
    assert not list(tmp_path.iterdir())  # scratch removed
