"""`seqsetvae train`: train SeqSetVAE at one batch size and seed, resumably.

    seqsetvae train --settings JSON --shards DIR --embedding F --batch-size B --seed S \
        [--lr-multiplier M] --out results/runs/bsB/lrM/seedS --threads N

The budget is `train.epochs` passes over the train split, the same samples for every
batch size; the peak learning rate is scaled with the batch size (`train.lr_scaling`),
and every schedule runs in epochs (`seqsetvae.training.schedule`), so every batch size
goes through the same phases. The run validates `train.validations_per_epoch` times per
epoch and keeps the weights of the best validation AUROC.

Writes into --out: metrics.json (the run's summary), metrics.jsonl (one line per step,
per validation, per noise-scale measurement and per epoch), best.safetensors (weights of
the best validation AUROC), final.safetensors (the last weights), run_config.json, and
checkpoints/ (see
`seqsetvae.training.checkpoint`). With `train.weight_average_epochs`, validation, best
and final are the averaged weights (`seqsetvae.training.averaging`). A job killed and started again resumes from its last
checkpoint and, on CPU, ends with the same weights as an uninterrupted run. A changed
budget (`train.epochs`) continues from the last checkpoint (the schedules follow the new
budget from there); checkpoints of another model, data, optimiser or seed (see
`checkpoint.run_identity`) are moved to `superseded/` in the run directory, never resumed or deleted.
A batch whose loss or gradient is not finite is skipped before the optimiser steps,
counted and logged with its patients, up to `train.max_skipped_batches`.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path, write_json
from seqsetvae.settings import load_settings
from seqsetvae.training import checkpoint as ckpt
from seqsetvae.training import distributed, noise_scale
from seqsetvae.training.averaging import WeightAverage
from seqsetvae.training.dataset import prefetched
from seqsetvae.training.distributed import World
from seqsetvae.training.memory import cuda_peaks_mb, peak_rss_mb
from seqsetvae.training.optimizer import build_optimizer, class_weights, set_learning_rate
from seqsetvae.training.preemption import Preempted, StopSignals
from seqsetvae.training.progress import RunState
from seqsetvae.training.recorder import Recorder
from seqsetvae.training.tracking import Tracker
from seqsetvae.training.runtime import (
    autocast,
    compiled_graphs,
    compiled_step,
    load_embedding,
    machine,
    resolve_device,
    resolve_threads,
    seed_everything,
)
from seqsetvae.training.sampler import LengthGroupedBatchSampler
from seqsetvae.training.schedule import evaluation_weights, loss_weights, lr_factor, scaled_lr
from seqsetvae.training.validation import VALIDATION_BATCH_SIZE, is_better, validate

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqsetvae train", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="{}", help="JSON with the model and train sections")
    parser.add_argument("--shards", required=True, help="shards directory (results/shards)")
    parser.add_argument("--embedding", required=True, help="embedding.safetensors")
    parser.add_argument("--batch-size", type=int, required=True, help="patients per batch")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: the first of train.seeds)")
    parser.add_argument("--lr-multiplier", type=float, default=1.0,
                        help="this run's point of train.lr_grid: the rule's peak learning rate times this")  # fmt: skip
    parser.add_argument("--out", required=True, help="run directory (results/runs/bsB/lrM/seedS)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads when train.threads is null")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs the job was given: with none visible, fail at once")
    parser.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        help="debug: checkpoint and stop after this many steps in total (no outputs written)",
    )
    return parser


# -- setup ----------------------------------------------------------------------------


# -- the run --------------------------------------------------------------------------


def _unused_path(folder: Path, name: str) -> Path:
    """folder/name, or folder/name-2, -3, ... if taken (what is moved aside is never overwritten)."""
    folder.mkdir(parents=True, exist_ok=True)
    path, number = folder / name, 1
    while path.exists():
        number += 1
        path = folder / f"{name}-{number}"
    return path


STEP_TERMS = ("loss", "recon", "kl", "ce")


class Trainer:
    """One run: model, AdamW, sampler and counters, checkpointed together."""

    def __init__(self, args, settings: dict, device: torch.device, threads: int, seed: int,
                 world: World = World()) -> None:  # fmt: skip
        from seqsetvae.model import ModelConfig, SeqSetVAE
        from seqsetvae.training.dataset import ShardBatches

        self.args, self.settings, self.device, self.threads, self.seed = args, settings, device, threads, seed
        self.world = world
        self.train = train = settings["train"]
        self.out = Path(args.out)
        self.checkpoints = self.out / "checkpoints"
        self.log_path = self.checkpoints / "metrics.jsonl"
        self.autocast = autocast(train["precision"], device)
        # batches built by DataLoader workers ahead of the step (auto: 2 on CUDA, none on a
        # CPU, whose cores the step itself uses), pinned and copied without blocking on CUDA
        self.workers = train["loader_workers"] if train["loader_workers"] is not None else (2 if device.type == "cuda" else 0)
        self.pin = device.type == "cuda"

        # train.compile: torch.compile of the step; CUDA graphs replay one graph per input
        # shape, so their batches are padded to buckets (seqsetvae.batching)
        self.compile_mode = compiled_step(train["compile"], device)
        pad = self.compile_mode == "reduce-overhead"

        self.embedding = load_embedding(Path(args.embedding))
        self.train_batches = ShardBatches(args.shards, "train", pad=pad)
        self.valid_batches = ShardBatches(args.shards, "valid", pad=pad)
        self.vocab_size = self.train_batches.reader.vocab_size
        if self.embedding.shape[0] != self.vocab_size:
            raise InputError(
                f"{args.embedding}: embedding has {self.embedding.shape[0]} rows but the shards in "
                f"{args.shards} have a vocabulary of {self.vocab_size} variables"
            )
        self.n_train = len(self.train_batches)
        if self.n_train == 0:
            raise InputError(f"{args.shards}/train: the train split has no patients")

        self.lr = scaled_lr(train, args.batch_size)
        config = ModelConfig.from_settings(settings["model"])
        self.model = SeqSetVAE(config, self.embedding, class_weights(self.train_batches.labels, train["class_weights"]))
        self.model.to(device)
        # validation, the best weights and evaluation read an average of the weights
        # (seqsetvae.training.averaging); the optimiser trains the model itself
        average = train["weight_average_epochs"]
        self.average = WeightAverage(self.model, average, self.n_train) if average else None
        self.evaluated = self.average.model if self.average else self.model
        self.graphs_before = compiled_graphs() if self.compile_mode is not None else 0  # per process
        if self.compile_mode is not None:
            self.model.compile_step(self.compile_mode)
            if self.average:
                self.average.model.compile_step(self.compile_mode)
        # what a training step calls: the model, or DDP around it (its gradients averaged
        # over the ranks); validation, noise-scale measurements and checkpoints use the model
        self.net = self.model
        if world.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(self.model, train, self.lr)
        self.sampler = LengthGroupedBatchSampler(
            self.train_batches.lengths,
            args.batch_size,
            mega_batch_factor=train["mega_batch_factor"],
            max_events_per_batch=train["max_events_per_batch"],
            seed=seed,
        )
        self.identity = ckpt.run_identity(settings, args.batch_size, seed, Path(args.shards), Path(args.embedding), device,
                                 world.size)  # fmt: skip
        self.state = RunState()
        self.stop_signals: StopSignals | None = None  # set by main() around training
        self.recorder = Recorder(world.is_main)  # metrics.jsonl, the tracker, the job log or terminal
        self.segment_start = time.perf_counter()  # wall time of this process since the last checkpoint

    # -- progress -------------------------------------------------------------------------

    @property
    def epochs_done(self) -> float:
        """Samples seen / train patients: the clock of every schedule."""
        return self.state.patients / self.n_train

    def due(self, per_epoch: float, done: int, offset: float = 1.0) -> bool:
        """Whether the next event of a series `per_epoch` times per epoch is reached: event k
        (from 0) falls at (k + offset) / per_epoch epochs."""
        return per_epoch > 0 and self.state.patients * per_epoch >= (done + offset) * self.n_train

    # -- checkpoints ----------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the newest checkpoint of this run's identity, if there is one; a
        changed budget continues too, unless the checkpoint is already past its end."""
        latest, saved, damaged = None, None, []
        for candidate in ckpt.checkpoints_newest_first(self.checkpoints):
            try:  # every file read whole before any of it is used
                weights, saved = ckpt.read_checkpoint(candidate)
                latest = candidate
                break
            except ckpt.DamagedCheckpoint as error:
                damaged.append((candidate, error))
        distributed.barrier()  # every rank has read before rank 0 moves anything
        if self.world.is_main:
            self.move_damaged_aside(damaged, latest)
        if latest is not None:
            progress = saved.get("run", {}).get("patients", 0) / self.n_train
            past_budget = progress > self.train["epochs"] + 1e-9
            if saved.get("identity") == self.identity and not past_budget:
                self.model.load_state_dict(weights, strict=True)
                self.optimizer.load_state_dict(saved["optimizer"])
                if self.average:
                    self.average.load_state_dict(saved["weight_average"])
                self.sampler.load_state_dict(saved["sampler"])
                ckpt.set_rng_state(saved["rng"], self.device)
                if self.world.distributed:
                    distributed.set_rank_rng(saved["rank_rng"], self.world, self.device)
                self.state = RunState.from_json(saved["run"])
                self.recorder.say(f"resuming from {latest} (step {self.state.step}, epoch {self.sampler.epoch + 1})")
                if saved["epochs"] != self.train["epochs"]:
                    change = {"step": self.state.step, "epochs_from": saved["epochs"], "epochs_to": self.train["epochs"]}
                    self.state.budget_changes.append(change)
                    self.recorder.say(
                        f"train.epochs changed from {saved['epochs']} to {self.train['epochs']}: continuing at "
                        f"{progress:.2f} epochs; the schedules follow the new budget from here"
                    )
            elif self.world.is_main:
                self.move_aside(saved, "past the new budget's end" if saved.get("identity") == self.identity else None)
        distributed.barrier()  # every rank has read the checkpoint before rank 0 writes
        if not self.world.is_main:
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        # the working metrics log is cut back to the checkpoint's length, so that steps
        # redone after a resume are not logged twice
        tracker = None
        if self.train["tracking"] != "none":  # the same records, from the step after the checkpoint's
            params = {"batch_size": self.args.batch_size, "seed": self.seed, "peak_lr": self.lr,
                      "lr_multiplier": self.train.get("lr_multiplier", 1.0),
                      "epochs": self.train["epochs"], "lr_scaling": self.train["lr_scaling"]}  # fmt: skip
            name = f"bs{self.args.batch_size}/lr{format(self.train.get('lr_multiplier', 1.0), 'g')}/seed{self.seed}"
            tracker = Tracker(self.train["tracking"], self.out, name,
                              self.state.step + 1, params)  # fmt: skip
        self.recorder.open(self.log_path, self.state.metrics_bytes, tracker)

    def move_damaged_aside(self, damaged: list, resumed: Path | None) -> None:
        """Keep damaged checkpoints under `damaged_checkpoints/` (never deleted), each named
        in a warning; say which checkpoint training resumes from instead."""
        for path, error in damaged:
            aside = _unused_path(self.out / "damaged_checkpoints", path.name)
            shutil.move(str(path), str(aside))
            instead = f"resuming from {resumed} instead" if resumed is not None else "no complete checkpoint is left"
            self.recorder.say(f"warning: checkpoint damaged ({error}): moved to {aside}; {instead}")
        if damaged and resumed is None:
            self.recorder.say("warning: training starts from step 0")

    def move_aside(self, saved: dict, why: str | None) -> None:
        """Keep a run that cannot be continued (`saved`: its newest state.json) under
        `superseded/`, never delete it."""
        name = (saved.get("identity") or saved.get("fingerprint") or "unknown")[:12]
        aside = _unused_path(self.out / "superseded", name)
        shutil.move(str(self.checkpoints), str(aside))
        reason = why or "written under another model, data, optimiser, batch size, seed or device"
        self.recorder.say(f"checkpoints in {self.checkpoints} are {reason}: moved to {aside}, training from step 0")

    def update_peaks(self) -> None:
        """Fold this process's memory peaks into the run's (the maximum over segments)."""
        peaks = self.state.peaks
        peaks["peak_rss_mb"] = max(peaks["peak_rss_mb"] or 0.0, peak_rss_mb())
        if self.device.type == "cuda":
            allocated, reserved = cuda_peaks_mb(self.device)
            peaks["cuda_max_allocated_mb"] = max(peaks["cuda_max_allocated_mb"] or 0.0, allocated)
            peaks["cuda_max_reserved_mb"] = max(peaks["cuda_max_reserved_mb"] or 0.0, reserved)

    def wall_time(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.segment_start

    def checkpoint(self, why: str) -> None:
        rank_rng = distributed.gather_rng(self.device) if self.world.distributed else None
        if not self.world.is_main:
            return
        self.state.metrics_bytes = self.recorder.flush()
        self.state.wall_time_s = self.wall_time()
        self.segment_start = time.perf_counter()
        self.update_peaks()
        everything = {
            "identity": self.identity,
            "epochs": self.train["epochs"],
            "run": self.state.to_json(),
            "sampler": self.sampler.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": ckpt.rng_state(self.device),
        }
        if rank_rng is not None:
            everything["rank_rng"] = rank_rng
        if self.average:
            everything["weight_average"] = self.average.state_dict()
        ckpt.save_checkpoint(self.checkpoints, self.state.step, self.model, everything)
        self.recorder.note(f"checkpoint at step {self.state.step} ({why})")

    # -- training -----------------------------------------------------------------------

    def part(self, indices: np.ndarray) -> tuple[np.ndarray, float]:
        """(positions in the global batch `indices` this process trains on, its loss share)."""
        if not self.world.distributed:
            return np.arange(len(indices)), 1.0
        return distributed.rank_share(indices, self.train_batches.reader.n_events, self.world)

    def step(self, indices: np.ndarray, epoch: int, batch=None, part=None, wait: float = 0.0) -> dict | None:
        """One optimizer step on the global batch `indices` (this process's `batch` of it,
        prefetched, or built here); returns its metrics line, or None when the batch was
        skipped (non-finite loss or gradient). `wait`: seconds spent waiting for `batch`."""
        start = time.perf_counter() - wait
        state = self.state
        reader = self.train_batches.reader
        mine, share = part if part is not None else self.part(indices)
        if batch is None:  # built here: the wait is the building
            batch = self.train_batches(indices[mine])
            wait = time.perf_counter() - start
        state.data_wait_s += wait
        batch = batch.to(self.device, non_blocking=self.pin)
        if share == 0.0:  # a stand-in patient (distributed.rank_share): weighs nothing, moves no running mean
            batch.patient_weight = torch.zeros_like(batch.patient_weight)
        noise = None
        if self.world.distributed:
            noise = distributed.rank_noise(indices, mine, reader.n_sets, self.model.config.latent_dim,
                                           next(self.model.parameters()).dtype, self.device)  # fmt: skip
        weights = loss_weights(self.settings["model"], state.step, self.epochs_done)
        # the learning rate of this step: the schedule at the progress this batch completes
        lr = set_learning_rate(
            self.optimizer, lr_factor(self.train, state.step + 1, (state.patients + len(indices)) / self.n_train)
        )
        with self.autocast():
            output = self.net(batch, weights) if noise is None else self.net(batch, weights, noise)
        self.optimizer.zero_grad(set_to_none=True)
        if self.world.distributed:
            size = {"patients": len(indices), "events": int(reader.n_events[indices].sum()),
                    "sets": int(reader.n_sets[indices].sum())}  # fmt: skip
            terms, sequence_slots = distributed.backward_global(output, weights, batch, size, share, self.world,
                                                                self.device)  # fmt: skip
        else:
            output.loss.backward()
            terms = {name: float(getattr(output, name).detach()) for name in STEP_TERMS}
            size = {"patients": batch.n_patients, "events": batch.n_events, "sets": batch.n_sets}
            sequence_slots = int(batch.sequence_mask.numel())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train["grad_clip"])
        terms["grad_norm"] = float(grad_norm)
        if not all(math.isfinite(value) for value in terms.values()):
            self.skip(indices, epoch, terms)
            return None
        self.optimizer.step()
        if self.average:
            self.average.update(self.model, size["patients"])
        seconds = time.perf_counter() - start  # float() above waited for the device

        state.count_step(size, terms["loss"], seconds, float(batch.fill_ratio), int(sequence_slots))
        line = {
            "kind": "step", "epoch": epoch + 1, "step": state.step, "samples": state.patients,
            "epochs": self.epochs_done, **terms, "lr": lr,
            "beta": weights.beta, "recon_weight": weights.recon, "pred_weight": weights.pred,
            "patients_per_s": size["patients"] / seconds, "events_per_s": size["events"] / seconds,
            "fill_ratio": float(batch.fill_ratio), "sequence_fill_ratio": float(batch.sequence_fill_ratio),
            "batch_patients": size["patients"], "batch_events": size["events"], "batch_sets": size["sets"],
        }  # fmt: skip
        self.recorder.record(line)
        return line

    def skip(self, indices: np.ndarray, epoch: int, terms: dict) -> None:
        """A batch with a non-finite loss or gradient: no optimiser step (the weights stay
        finite); its patients count as seen, so every schedule stays on the sampler's
        clock. Past `train.max_skipped_batches` the run fails, naming the batch."""
        self.optimizer.zero_grad(set_to_none=True)
        state = self.state
        patients = [str(p) for p in self.train_batches.reader.patient_ids[np.asarray(indices)]]
        state.skipped_batches += 1
        state.patients += len(patients)
        bad = sorted(name for name, value in terms.items() if not math.isfinite(value))
        where = f"epoch {epoch + 1}, after step {state.step}, patients {', '.join(patients)}"
        limit = self.train["max_skipped_batches"]
        if state.skipped_batches > limit:
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} ({where}): {state.skipped_batches} batches skipped, more than "
                f"train.max_skipped_batches = {limit}"
            )
        self.recorder.record({"kind": "skipped", "epoch": epoch + 1, "step": state.step, "samples": state.patients,
                              "non_finite": bad, "patients": patients})  # fmt: skip
        self.recorder.say(f"skipped a batch with a non-finite {', '.join(bad)} ({where}); {state.skipped_batches} skipped so far")

    def validate(self) -> None:
        """Score the validation split, log the point, keep the best weights (rank 0)."""
        state = self.state
        if not self.world.is_main:
            state.validations += 1
            return
        # inference: a patient's output does not depend on its batch-mates, so validation
        # batches are at least VALIDATION_BATCH_SIZE patients (batch size 1 validated one
        # patient per forward, a sixth of its run's time on the default data)
        result = validate(
            self.evaluated, self.valid_batches, max(self.args.batch_size, VALIDATION_BATCH_SIZE), self.train,
            self.device, self.autocast, evaluation_weights(self.settings["model"]),
        )  # fmt: skip
        state.validations += 1
        train_loss = state.take_loss()
        line = {
            "kind": "validation", "validation": state.validations, "step": state.step,
            "samples": state.patients, "epochs": self.epochs_done, "train_loss": train_loss, **result,
            "train_time_s": state.train_time_s, "wall_time_s": self.wall_time(),
        }  # fmt: skip
        self.recorder.record(line)
        if is_better(result, state.best):
            epoch, step = self.sampler.epoch + (self.sampler.position > 0), state.step
            state.best = {"validation": state.validations, "epoch": epoch, "step": step, **result}
            state.best.pop("val_auprc")
            ckpt.save_weights(self.evaluated, self.checkpoints / "best.safetensors",
                              {"epoch": epoch, "step": step, "epochs": self.epochs_done})  # fmt: skip
        self.recorder.note(
            f"validation {state.validations} at {self.epochs_done:.2f} epochs (step {state.step}): "
            f"val loss {result['val_loss']}, AUROC {result['val_auroc']}, AUPRC {result['val_auprc']}"
        )

    def measure_noise_scale(self) -> None:
        """One gradient-noise-scale measurement at the current weights (no step, RNG untouched)."""
        config = self.train["noise_scale"]
        count = len(self.state.noise_measurements)
        if not self.world.is_main:  # rank 0 measures; the others keep the count
            self.state.noise_measurements.append({})
            return
        patients = min(config["patients"], self.n_train - self.n_train % 2)
        if patients < 2:
            return
        rng = np.random.default_rng([self.seed, 1, count])  # independent of the sampler's stream
        indices = rng.choice(self.n_train, size=patients, replace=False)
        weights = loss_weights(self.settings["model"], self.state.step, self.epochs_done)
        params = [p for p in self.model.parameters() if p.requires_grad]

        def gradient(half: np.ndarray) -> np.ndarray:
            batch = self.train_batches(np.sort(half)).to(self.device)
            with self.autocast():
                loss = self.model(batch, weights).loss
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            return torch.cat([g.reshape(-1) for g in grads if g is not None]).double().cpu().numpy()

        devices = [self.device] if self.device.type == "cuda" else []
        # a measurement, not training: the buffers its training-mode passes move (the
        # readout's running mean) are put back, as the RNG is
        buffers = [b.detach().clone() for b in self.model.buffers()]
        self.model.classifier.sync_ranks = False  # rank 0 measures alone
        try:
            with torch.random.fork_rng(devices=devices, device_type=self.device.type):
                measurement = noise_scale.measure_halves(gradient, indices)
        finally:
            self.model.classifier.sync_ranks = True
            for buffer, saved in zip(self.model.buffers(), buffers):
                buffer.copy_(saved)
        measurement = {"step": self.state.step, "epochs": self.epochs_done, **measurement}
        self.state.noise_measurements.append(measurement)
        self.recorder.record({"kind": "noise_scale", **measurement})

    def end_epoch(self, epoch: int) -> None:
        self.recorder.end_epoch()
        state = self.state
        train_loss = state.take_epoch_loss()
        self.recorder.record({"kind": "epoch", "epoch": epoch + 1, "step": state.step, "train_loss": train_loss,
                              "wall_time_s": self.wall_time(), "compiled_graphs": self.graphs()})  # fmt: skip
        self.recorder.say(f"epoch {epoch + 1}/{self.train['epochs']} done: train loss {train_loss:.4f}, best {state.best}")
        self.checkpoint(f"end of epoch {epoch + 1}")

    def graphs(self) -> int | None:
        """Graphs compiled so far (train.compile): one per mode (train, validation) and
        none more after the first batches; None when the step runs eagerly."""
        return compiled_graphs() - self.graphs_before if self.compile_mode is not None else None

    def fit(self) -> bool:
        """Train to the end of the budget (False: stopped early by --stop-after-steps)."""
        train, sampler, stop_after, state = self.train, self.sampler, self.args.stop_after_steps, self.state
        self.model.train()
        while sampler.epoch < train["epochs"]:
            epoch = sampler.epoch
            self.recorder.start_epoch(epoch, len(sampler), sampler.position)
            # the epoch's remaining batches, this process's part of each, built ahead
            remaining = sampler.batches(epoch)[sampler.position :]
            parts = [self.part(indices) for indices in remaining]
            plan = [indices[mine] for indices, (mine, _) in zip(remaining, parts)]
            loader = prefetched(self.train_batches, plan, self.workers, self.pin)
            for indices, part in zip(sampler, parts):
                # measurements mid-way between validations: at (k + 0.5) / per_epoch epochs
                if self.due(train["noise_scale"]["per_epoch"], len(state.noise_measurements), offset=0.5):
                    self.measure_noise_scale()
                waited = time.perf_counter()
                batch = next(loader)
                line = self.step(indices, epoch, batch, part, wait=time.perf_counter() - waited)
                step = state.step
                self.recorder.step_done(line, epoch, train["epochs"], sampler.position, len(sampler), train["log_every"])
                if self.due(train["validations_per_epoch"], state.validations) or self.closing_validation_due(epoch):
                    self.validate()
                epoch_ends = sampler.position == len(sampler)  # checkpointed after the epoch line
                signalled = self.signalled()
                stop = signalled is not None or (line is not None and stop_after is not None and step >= stop_after)
                if ((line is not None and step % train["checkpoint_every"] == 0) or stop) and not epoch_ends:
                    self.checkpoint("stop requested" if stop else "periodic")
                if stop:
                    if epoch_ends:
                        self.end_epoch(epoch)
                    self.recorder.close()
                    if signalled is not None:
                        raise Preempted(signalled, step, self.checkpoints / f"step-{step:08d}")
                    self.recorder.say(f"stopped after {step} steps (--stop-after-steps); outputs not written")
                    return False
            self.end_epoch(epoch)
        self.recorder.close()
        return True

    def closing_validation_due(self, epoch: int) -> bool:
        """The budget's end is a validation point even when epochs x validations_per_epoch
        is not whole (a 1-epoch run at 2.5 per epoch: 0.4, 0.8 and 1.0 epochs)."""
        per_epoch, epochs = self.train["validations_per_epoch"], self.train["epochs"]
        ends = epoch + 1 == epochs and self.sampler.position == len(self.sampler)
        return per_epoch > 0 and ends and self.state.validations < math.ceil(per_epoch * epochs - 1e-9)

    def signalled(self) -> int | None:
        """The stop signal received by this process (or, in a multi-process job, by any
        rank: they stop at the same step), or None."""
        received = self.stop_signals.received if self.stop_signals else None
        if not self.world.distributed:
            return received
        largest = distributed.all_max([received or 0], self.device)[0]
        return int(largest) or None

    # -- outputs ------------------------------------------------------------------------

    def write_outputs(self) -> None:
        out, state, train = self.out, self.state, self.train
        with atomic_path(out / "metrics.jsonl") as tmp:
            shutil.copyfile(self.log_path, tmp)
        with atomic_path(out / "best.safetensors") as tmp:
            shutil.copyfile(self.checkpoints / "best.safetensors", tmp)
        final_meta = {"epoch": self.sampler.epoch, "step": state.step, "epochs": self.epochs_done}
        ckpt.save_weights(self.evaluated, out / "final.safetensors", final_meta)
        ckpt.prune(self.checkpoints, keep=1)  # the final one: a restarted finished run resumes it
        write_json(
            out / "run_config.json",
            {
                "model": self.settings["model"],
                "train": {key: value for key, value in train.items() if key != "lr_multiplier"},  # config keys only
                "batch_size": self.args.batch_size,
                "seed": self.seed,
                "vocab_size": int(self.vocab_size),
                "embedding_dim": int(self.embedding.shape[1]),
                "lr": self.lr,
                "lr_multiplier": train.get("lr_multiplier", 1.0),
            },
        )
        self.update_peaks()
        context = {
            "batch_size": self.args.batch_size,
            "seed": self.seed,
            "loader_workers": self.workers,
            "epochs": train["epochs"],
            "steps_per_epoch": state.step / train["epochs"],
            "train_patients": self.n_train,
            "device": self.device.type,
            "device_requested": train["device"],
            "devices": self.world.size,  # processes (ranks); throughput counts them all
            "machine": machine(self.device),
            "threads": self.threads,
            "precision": train["precision"],
            "compile": self.compile_mode,  # None: eager
            "compiled_graphs": self.graphs(),
            "torch_version": torch.__version__,
            "lr": self.lr,
            "lr_multiplier": train.get("lr_multiplier", 1.0),
            "lr_scaling": train["lr_scaling"],
            "max_events_per_batch": train["max_events_per_batch"],
        }
        summary = state.summary(self.wall_time(), train["noise_scale"]["patients"])
        write_json(out / "metrics.json", {**context, **summary})


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings(args.settings)
    train = settings["train"]
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not (math.isfinite(args.lr_multiplier) and args.lr_multiplier > 0):
        raise InputError(f"--lr-multiplier must be a positive number, got {args.lr_multiplier}")
    if args.lr_multiplier != 1.0:  # absent at 1, so that runs of earlier versions resume
        train["lr_multiplier"] = args.lr_multiplier
    distributed.check_devices(train["devices"], [args.batch_size], train["max_events_per_batch"])
    if train["devices"] > 1 and not distributed.launched():
        Recorder().say(f"training in {train['devices']} processes (torchrun, standalone)")
        return distributed.launch(argv, train["devices"])
    seed = train["seeds"][0] if args.seed is None else args.seed
    threads = resolve_threads(train["threads"], args.threads)
    device = resolve_device(train["device"], args.gpus, train["cpu_fallback"])
    world = distributed.init(device.type)
    recorder = Recorder(world.is_main)
    if world.distributed:
        if device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(device)
        else:  # the job's CPUs shared between its processes
            threads = max(1, threads // world.size)
    torch.set_num_threads(threads)
    if train["device"] == "auto" and device.type == "cpu":
        given = f" although the job was given {args.gpus} GPU(s) (train.cpu_fallback)" if args.gpus else ""
        recorder.say(f"train.device auto: no CUDA device visible{given}, training on the CPU")
    seed_everything(seed)

    trainer = Trainer(args, settings, device, threads, seed, world)
    trainer.stop_signals = StopSignals(train["stop_signals"])
    with trainer.stop_signals:
        return _train(trainer, args, train, device, world, seed, threads)


def _train(trainer: Trainer, args, train: dict, device, world: World, seed: int, threads: int) -> int:
    trainer.resume()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.recorder.say(
        f"training batch size {args.batch_size}, seed {seed} on {device.type} ({threads} threads, "
        f"{train['precision']}), {trainer.n_train} train / {len(trainer.valid_batches)} valid patients, "
        f"{train['epochs']} epochs, peak lr {trainer.lr:g} ({train['lr_scaling']} scaling)"
    )
    try:
        finished = trainer.fit()
    except Preempted as stop:
        trainer.recorder.say(f"error: {stop}")
        distributed.finish()
        return stop.status
    if finished and world.is_main:
        trainer.write_outputs()
        trainer.recorder.say(f"wrote {args.out}")
    distributed.barrier()
    distributed.finish()
    return 0
