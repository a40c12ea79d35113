"""A full disk: the stage leaves no partial output, and the reason reaches the console even
when the stage's log, on that same disk, cannot be written. On a small tmpfs, so root only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs at tmp_path/disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_stage_on_a_full_disk_names_the_reason_and_leaves_nothing(small_disk):
    raw = small_disk / "raw"
    command = [
        sys.executable,
        "-m",
        "seqsetvae.cli",
        "synthetic",
        "--settings",
        '{"synthetic": {"patients": 500}}',
        "--events",
        str(raw / "events.csv"),
        "--labels",
        str(raw / "labels.csv"),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and "no space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    assert not raw.exists() or not any(raw.iterdir())  # no partial or temporary file


def test_the_reason_reaches_the_console_when_the_log_cannot_be_written(small_disk):
    (small_disk / "logs").mkdir()
    fill(small_disk)
    log = small_disk / "logs" / "stage.log"
    stage = "import sys; print('working'); print('error: the reason', file=sys.stderr); sys.exit(3)"
    script = (
        f'set -euo pipefail; source {REPO / "workflow/scripts/logged.sh"}; logged {log} {sys.executable} -c "{stage}"'
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert lines[0] == f"{sys.executable} -c failed; log: {log}"
    assert lines[1] == "error: the reason"
    assert lines[2].startswith("(the log could not be written: 0 KiB free on the disk of ")


def test_the_log_keeps_the_output_and_success_stays_quiet(tmp_path):
    log = tmp_path / "stage.log"
    script = f"set -euo pipefail; source {REPO / 'workflow/scripts/logged.sh'}; logged {log} echo fine"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert log.read_text() == "fine\n"


def test_the_shards_stage_checks_free_space_before_writing(small_disk, small_shards, capsys):
    """small_shards' events need more than the tmpfs offers once it is nearly full."""
    import json

    from seqsetvae import cli

    fill(small_disk)
    out = small_disk / "shards"
    argv = [
        "shards",
        "--events",
        str(small_shards / "events"),
        "--stats",
        str(small_shards / "stats.json"),
        "--vocab",
        str(small_shards / "vocab.json"),
        "--out",
        str(out),
        "--qc",
        str(small_disk / "qc.json"),
    ]
    assert cli.main(argv) == 1
    rows = json.loads((small_shards / "events" / "qc.json").read_text())["rows_kept"]
    assert rows > 0 and not out.exists() and not (small_disk / "qc.json").exists()
    error = capsys.readouterr().err
    assert error.startswith(
        f"error: {small_disk}: 0.0 MiB free on its disk, but the shards of {rows} events needs at least"
    )
    assert [p.name for p in small_disk.iterdir()] == ["filler"]  # no scratch folder left
