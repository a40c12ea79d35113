"""Where a run's records and messages go: `metrics.jsonl` (and a tracker, `train.tracking`)
for the numbers, the job log or a terminal for the words.

On a terminal each epoch is a tqdm bar with the latest loss and throughput; in a job log
(not a terminal) a line every `train.log_every` steps, one per validation and per
checkpoint. Only rank 0 of a multi-process job writes anything: the other ranks hold a
quiet recorder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from seqsetvae.training.tracking import Tracker


class Recorder:
    def __init__(self, is_main: bool = True) -> None:
        self.is_main = is_main
        self.terminal = sys.stderr.isatty()
        self.log_path: Path | None = None
        self.log = None
        self.tracker: Tracker | None = None
        self.bar = None

    # -- words ------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """A message for the user (the job log, or the terminal above the bar)."""
        if self.is_main:
            print(message, file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        """A message for job logs only: on a terminal the bar shows the same."""
        if not self.terminal:
            self.say(message)

    # -- numbers ----------------------------------------------------------------------

    def open(self, log_path: Path, keep_bytes: int, tracker: Tracker | None = None) -> None:
        """Append to the working metrics.jsonl, cut back to `keep_bytes` (its length at the
        checkpoint resumed from: steps redone after a resume are not logged twice)."""
        if not self.is_main:
            return
        self.log_path = log_path
        with open(log_path, "ab") as log:
            log.truncate(keep_bytes)
        self.log = open(log_path, "a")
        self.tracker = tracker

    def record(self, line: dict) -> None:
        if not self.is_main:
            return
        self.log.write(json.dumps(line, allow_nan=False) + "\n")
        if self.tracker is not None:
            self.tracker.log(line)

    def flush(self) -> int:
        """Everything recorded so far on disk; the working log's length in bytes."""
        self.log.flush()
        if self.tracker is not None:
            self.tracker.flush()
        return self.log_path.stat().st_size

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.is_main and self.log is not None:
            self.log.close()
            if self.tracker is not None:
                self.tracker.close()

    # -- progress ---------------------------------------------------------------------

    def start_epoch(self, epoch: int, total: int, done: int) -> None:
        self.bar = tqdm(
            total=total, initial=done, desc=f"epoch {epoch + 1}", disable=not self.terminal or not self.is_main
        )

    def step_done(self, line: dict | None, epoch: int, epochs: int, position: int, total: int, log_every: int) -> None:
        """After an optimiser step (`line`: its record; None: a skipped batch)."""
        self.bar.update(1)
        if line is None:
            return
        if self.terminal:
            self.bar.set_postfix(loss=f"{line['loss']:.3f}", pps=f"{line['patients_per_s']:.1f}")
        elif line["step"] % log_every == 0:
            self.say(
                f"epoch {epoch + 1}/{epochs} batch {position}/{total} step {line['step']}: loss {line['loss']:.4f} "
                f"(recon {line['recon']:.4f}, kl {line['kl']:.4f}, ce {line['ce']:.4f}) lr {line['lr']:.3g}, "
                f"{line['patients_per_s']:.1f} patients/s"
            )

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
