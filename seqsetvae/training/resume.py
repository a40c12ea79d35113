"""Checkpointing a training run: what is saved, which checkpoint a restarted job continues
from, and what is kept aside instead (never deleted). The files themselves are
`seqsetvae.training.checkpoint`'s."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from seqsetvae.training import checkpoint as ckpt
from seqsetvae.training import distributed
from seqsetvae.training.lr_grid import multiplier_tag
from seqsetvae.training.progress import RunState
from seqsetvae.training.tracking import Tracker

if TYPE_CHECKING:
    from seqsetvae.training.train import Trainer


def unused_path(folder: Path, name: str) -> Path:
    """folder/name, or folder/name-2, -3, ... if taken (what is moved aside is never overwritten)."""
    folder.mkdir(parents=True, exist_ok=True)
    path, number = folder / name, 1
    while path.exists():
        number += 1
        path = folder / f"{name}-{number}"
    return path


def resume(trainer: Trainer) -> None:
    """Continue from the newest checkpoint of this run's identity, if there is one; a
    changed budget continues too, unless the checkpoint is already past its end."""
    latest, saved, damaged = None, None, []
    for candidate in ckpt.checkpoints_newest_first(trainer.checkpoints):
        try:  # every file read whole before any of it is used
            weights, saved = ckpt.read_checkpoint(candidate)
            latest = candidate
            break
        except ckpt.DamagedCheckpoint as error:
            damaged.append((candidate, error))
    distributed.barrier()  # every rank has read before rank 0 moves anything
    if trainer.world.is_main:
        move_damaged_aside(trainer, damaged, latest)
    if latest is not None:
        progress = saved.get("run", {}).get("patients", 0) / trainer.n_train
        past_budget = progress > trainer.train["epochs"] + 1e-9
        if saved.get("identity") == trainer.identity and not past_budget:
            trainer.model.load_state_dict(weights, strict=True)
            trainer.optimizer.load_state_dict(saved["optimizer"])
            if trainer.average:
                trainer.average.load_state_dict(saved["weight_average"])
            trainer.sampler.load_state_dict(saved["sampler"])
            ckpt.set_rng_state(saved["rng"], trainer.device)
            if trainer.world.distributed:
                distributed.set_rank_rng(saved["rank_rng"], trainer.world, trainer.device)
            trainer.state = RunState.from_json(saved["run"])
            trainer.recorder.say(
                f"resuming from {latest} (step {trainer.state.step}, epoch {trainer.sampler.epoch + 1})"
            )
            if saved["epochs"] != trainer.train["epochs"]:
                change = {
                    "step": trainer.state.step,
                    "epochs_from": saved["epochs"],
                    "epochs_to": trainer.train["epochs"],
                }
                trainer.state.budget_changes.append(change)
                trainer.recorder.say(
                    f"train.epochs changed from {saved['epochs']} to {trainer.train['epochs']}: continuing at "
                    f"{progress:.2f} epochs; the schedules follow the new budget from here"
                )
        elif trainer.world.is_main:
            move_aside(
                trainer, saved, "past the new budget's end" if saved.get("identity") == trainer.identity else None
            )
    distributed.barrier()  # every rank has read the checkpoint before rank 0 writes
    if not trainer.world.is_main:
        return
    trainer.checkpoints.mkdir(parents=True, exist_ok=True)
    # the working metrics log is cut back to the checkpoint's length, so that steps
    # redone after a resume are not logged twice
    tracker = None
    if trainer.train["tracking"] != "none":  # the same records, from the step after the checkpoint's
        params = {
            "batch_size": trainer.args.batch_size,
            "seed": trainer.seed,
            "peak_lr": trainer.lr,
            "lr_multiplier": trainer.lr_multiplier,
            "epochs": trainer.train["epochs"],
            "lr_scaling": trainer.train["lr_scaling"],
        }
        name = f"bs{trainer.args.batch_size}/lr{multiplier_tag(trainer.lr_multiplier)}/seed{trainer.seed}"
        tracker = Tracker(trainer.train["tracking"], trainer.out, name, trainer.state.step + 1, params)
    trainer.recorder.open(trainer.log_path, trainer.state.metrics_bytes, tracker)


def move_damaged_aside(trainer: Trainer, damaged: list, resumed: Path | None) -> None:
    """Keep damaged checkpoints under `damaged_checkpoints/` (never deleted), each named
    in a warning; say which checkpoint training resumes from instead."""
    for path, error in damaged:
        aside = unused_path(trainer.out / "damaged_checkpoints", path.name)
        shutil.move(str(path), str(aside))
        instead = f"resuming from {resumed} instead" if resumed is not None else "no complete checkpoint is left"
        trainer.recorder.say(f"warning: checkpoint damaged ({error}): moved to {aside}; {instead}")
    if damaged and resumed is None:
        trainer.recorder.say("warning: training starts from step 0")


def move_aside(trainer: Trainer, saved: dict, why: str | None) -> None:
    """Keep a run that cannot be continued (`saved`: its newest state.json) under
    `superseded/`, never delete it."""
    name = (saved.get("identity") or saved.get("fingerprint") or "unknown")[:12]
    aside = unused_path(trainer.out / "superseded", name)
    shutil.move(str(trainer.checkpoints), str(aside))
    reason = why or "written under another model, data, optimiser, batch size, seed or device"
    trainer.recorder.say(f"checkpoints in {trainer.checkpoints} are {reason}: moved to {aside}, training from step 0")


def save(trainer: Trainer, why: str) -> None:
    """A checkpoint of the whole run state (rank 0 writes; every rank gives its RNG)."""
    rank_rng = distributed.gather_rng(trainer.device) if trainer.world.distributed else None
    if not trainer.world.is_main:
        return
    trainer.state.metrics_bytes = trainer.recorder.flush()
    trainer.state.wall_time_s = trainer.wall_time()
    trainer.segment_start = time.perf_counter()
    trainer.state.update_peaks(trainer.device)
    everything = {
        "identity": trainer.identity,
        "epochs": trainer.train["epochs"],
        "run": trainer.state.to_json(),
        "sampler": trainer.sampler.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "rng": ckpt.rng_state(trainer.device),
    }
    if rank_rng is not None:
        everything["rank_rng"] = rank_rng
    if trainer.average:
        everything["weight_average"] = trainer.average.state_dict()
    ckpt.save_checkpoint(trainer.checkpoints, trainer.state.step, trainer.model, everything)
    trainer.recorder.note(f"checkpoint at step {trainer.state.step} ({why})")
