"""Preemption: a signal asks training to checkpoint at the end of its current step and exit.

A cluster ends a job with SIGTERM (preemption, `scancel`, the time limit), then SIGKILL
after a grace period (SLURM's KillWait, 30 s by default); SLURM can also send a warning
signal some time before the limit (`--signal=USR1@120`, docs/slurm.md). Without a handler
either signal kills the process and the work since the last periodic checkpoint is lost.
With one, the step in flight finishes, a checkpoint is written (about a second), and the
process exits with 128 + the signal's number, which Snakemake's `retries` (or a SLURM
requeue) turns into a run resumed from that checkpoint: no step is trained twice.
"""

from __future__ import annotations

import signal
import threading


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint) -> None:
        self.signum, self.step = signum, step
        self.status = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}: checkpoint written to {checkpoint}; run the same target again "
            f"to resume from it (Snakemake's retries and a SLURM requeue do so)"
        )


class StopSignals:
    """While active, the signals named in `names` (e.g. ["SIGTERM", "SIGUSR1"]) are
    recorded instead of ending the process; the previous handlers come back on exit."""

    def __init__(self, names: list[str]) -> None:
        self.signals = [signal.Signals[name] for name in names]
        self.received: int | None = None
        self._previous: dict = {}

    def _record(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread only
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
