"""`seqsetvae train`: train SeqSetVAE at one batch size, learning rate and seed, resumably.

    seqsetvae train --settings JSON --shards DIR --embedding F --batch-size B --seed S \
        [--lr-multiplier M] --out results/runs/bsB/lrM/seedS --threads N

The budget is `train.epochs` passes over the train split, the same samples for every
batch size, with every schedule in epochs (`seqsetvae.training.schedule`); the run
validates `train.validations_per_epoch` times per epoch and keeps the weights of the
best validation AUROC. `Trainer.fit` is the loop; one optimiser step is
`seqsetvae.training.step`; checkpoints and resuming are `seqsetvae.training.resume`; the
files a finished run leaves are `seqsetvae.training.outputs`. docs/training.md describes
the run, docs/outputs.md its files.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from seqsetvae.errors import InputError
from seqsetvae.runtime import device as runtime
from seqsetvae.runtime.dataset import prefetched
from seqsetvae.runtime.sampler import LengthGroupedBatchSampler
from seqsetvae.settings import load_settings
from seqsetvae.training import checkpoint as ckpt
from seqsetvae.training import distributed, head_refit, noise_scale, outputs, resume, validation
from seqsetvae.training.averaging import WeightAverage
from seqsetvae.training.distributed import World
from seqsetvae.training.optimizer import build_optimizer, class_weights, set_learning_rate, training_class_odds
from seqsetvae.training.preemption import Preempted, StopSignals
from seqsetvae.training.progress import RunState, step_record
from seqsetvae.training.recorder import Recorder
from seqsetvae.training.schedule import loss_weights, lr_factor, scaled_lr
from seqsetvae.training.step import train_step


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqsetvae train", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="{}", help="JSON with the model and train sections")
    parser.add_argument("--shards", required=True, help="shards directory (results/shards)")
    parser.add_argument("--embedding", required=True, help="embedding.safetensors")
    parser.add_argument("--batch-size", type=int, required=True, help="patients per batch")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: the first of train.seeds)")
    parser.add_argument(
        "--lr-multiplier", type=float, default=1.0, help="the rule's peak lr times this (train.lr_grid)"
    )
    parser.add_argument("--out", required=True, help="run directory (results/runs/bsB/lrM/seedS)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads when train.threads is null")
    parser.add_argument(
        "--init-weights", default=None, help="start the set VAE from `seqsetvae pretrain`'s setvae.safetensors"
    )
    parser.add_argument("--gpus", type=int, default=0, help="GPUs the job was given: with none visible, fail at once")
    parser.add_argument("--stop-after-steps", type=int, help="debug: checkpoint and stop after this many steps")
    return parser


STEP_TERMS = ("loss", "recon", "kl", "ce")


class Trainer:
    """One run: model, AdamW, sampler and counters, checkpointed together."""

    def __init__(
        self, args, settings: dict, device: torch.device, threads: int, seed: int, world: World = World()
    ) -> None:
        from seqsetvae.model import ModelConfig, SeqSetVAE
        from seqsetvae.runtime.dataset import ShardBatches
        from seqsetvae.training.pretrain import load_pretrained
        from seqsetvae.training.wide_start import apply_wide_start, fit_wide_start

        self.args, self.settings, self.device, self.threads, self.seed = args, settings, device, threads, seed
        self.world = world
        self.train = train = settings["train"]
        self.out = Path(args.out)
        self.checkpoints = self.out / "checkpoints"
        self.log_path = self.checkpoints / "metrics.jsonl"
        self.autocast = runtime.autocast(train["precision"], device)
        # batches built by DataLoader workers ahead of the step (auto: 2 on CUDA, none on a
        # CPU, whose cores the step itself uses), pinned and copied without blocking on CUDA
        self.workers = (
            train["loader_workers"] if train["loader_workers"] is not None else (2 if device.type == "cuda" else 0)
        )
        self.pin = device.type == "cuda"

        # train.compile: torch.compile of the step; CUDA graphs replay one graph per input
        # shape, so their batches are padded to buckets (seqsetvae.batching)
        self.compile_mode = runtime.compiled_step(train["compile"], device)
        pad = self.compile_mode == "reduce-overhead"

        self.embedding = runtime.load_embedding(Path(args.embedding))
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

        self.lr_multiplier = train.get("lr_multiplier", 1.0)  # this run's point of train.lr_grid
        self.lr = scaled_lr(train, args.batch_size)
        config = ModelConfig.from_settings(settings["model"])
        labels, sampling = self.train_batches.labels, train["class_sampling"]
        weights = class_weights(labels, train["class_weights"], sampling)
        self.model = SeqSetVAE(config, self.embedding, weights)
        if args.init_weights is not None:  # seqsetvae.training.pretrain
            load_pretrained(self.model, args.init_weights)
        if train["wide_start"] == "regression":  # seqsetvae.training.wide_start
            start = fit_wide_start(Path(args.shards), train["wide_start_c_grid"], max_iter=2000)
            apply_wide_start(self.model, start, self.n_train, training_class_odds(labels, weights, sampling))
            edge = ", the grid's end" if start.at_grid_edge else ""
            if world.is_main:
                print(
                    f"train: the wide path starts at the logistic regression (C {start.c:g}{edge}; "
                    f"validation AUROC {start.val_auroc if start.val_auroc is None else round(start.val_auroc, 4)})"
                )
        if train["wide_lr_factor"] == 0:  # a fixed offset: no dropout, no moving moments
            self.model.classifier.freeze_wide()
        self.model.to(device)
        # validation, the best weights and evaluation read an average of the weights
        # (seqsetvae.training.averaging); the optimiser trains the model itself
        average = train["weight_average_epochs"]
        self.average = WeightAverage(self.model, average, self.n_train) if average else None
        self.evaluated = self.average.model if self.average else self.model
        self.graphs_before = runtime.compiled_graphs() if self.compile_mode is not None else 0  # per process
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
            labels=self.train_batches.labels,
            class_sampling=train["class_sampling"],
        )
        self.identity = ckpt.run_identity(
            settings,
            args.batch_size,
            seed,
            Path(args.shards),
            Path(args.embedding),
            device,
            world.size,
            init_weights=Path(args.init_weights) if args.init_weights else None,
        )
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

    def wall_time(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.segment_start

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
            noise = distributed.rank_noise(
                indices,
                mine,
                reader.n_sets,
                self.model.config.latent_dim,
                next(self.model.parameters()).dtype,
                self.device,
            )
        weights = loss_weights(self.settings["model"], state.step, self.epochs_done)
        # the learning rate of this step: the schedule at the progress this batch completes
        lr = set_learning_rate(
            self.optimizer, lr_factor(self.train, state.step + 1, (state.patients + len(indices)) / self.n_train)
        )
        if self.world.distributed:
            size = {
                "patients": len(indices),
                "events": int(reader.n_events[indices].sum()),
                "sets": int(reader.n_sets[indices].sum()),
            }

            def backward(output):  # -> (terms, sequence slots) of the global batch
                penalty = self.model.classifier.wide_penalty()
                return distributed.backward_global(
                    output, weights, batch, size, share, self.world, self.device, penalty
                )
        else:
            size = {"patients": batch.n_patients, "events": batch.n_events, "sets": batch.n_sets}

            def backward(output):
                output.loss.backward()
                return {name: float(getattr(output, name).detach()) for name in STEP_TERMS}, int(
                    batch.sequence_mask.numel()
                )

        def finite(grad_norm, result) -> bool:
            result[0]["grad_norm"] = float(grad_norm)
            return all(math.isfinite(value) for value in result[0].values())

        *_, (terms, sequence_slots), stepped = train_step(
            self.net,
            self.model,
            self.optimizer,
            batch,
            weights,
            self.autocast,
            self.train["grad_clip"],
            noise=noise,
            backward=backward,
            approve=finite,
        )
        if not stepped:
            self.skip(indices, epoch, terms)
            return None
        if self.average:
            self.average.update(self.model, size["patients"])
        seconds = time.perf_counter() - start  # float() above waited for the device

        state.count_step(size, terms["loss"], seconds, float(batch.fill_ratio), int(sequence_slots))
        line = step_record(state, epoch, self.epochs_done, terms, lr, weights, size, seconds, batch)
        self.recorder.record(line)
        return line

    def skip(self, indices: np.ndarray, epoch: int, terms: dict) -> None:
        """A batch with a non-finite loss or gradient: no optimiser step (the weights stay
        finite); its patients count as seen, so every schedule stays on the sampler's
        clock. Past `train.max_skipped_batches` the run fails, naming the batch."""
        patients = [str(p) for p in self.train_batches.reader.patient_ids[np.asarray(indices)]]
        where = f"epoch {epoch + 1}, after step {self.state.step}, patients {', '.join(patients)}"
        bad = self.state.count_skipped(len(patients), terms, self.train["max_skipped_batches"], where)
        self.recorder.record(
            {
                "kind": "skipped",
                "epoch": epoch + 1,
                "step": self.state.step,
                "samples": self.state.patients,
                "non_finite": bad,
                "patients": patients,
            }
        )
        self.recorder.say(
            f"skipped a batch with a non-finite {', '.join(bad)} ({where}); {self.state.skipped_batches} skipped so far"
        )

    def end_epoch(self, epoch: int) -> None:
        self.recorder.end_epoch()
        state = self.state
        train_loss = state.take_epoch_loss()
        self.recorder.record(
            {
                "kind": "epoch",
                "epoch": epoch + 1,
                "step": state.step,
                "train_loss": train_loss,
                "wall_time_s": self.wall_time(),
                "compiled_graphs": self.graphs(),
            }
        )
        self.recorder.say(
            f"epoch {epoch + 1}/{self.train['epochs']} done: train loss {train_loss:.4f}, best {state.best}"
        )
        resume.save(self, f"end of epoch {epoch + 1}")

    def graphs(self) -> int | None:
        """Graphs compiled so far (train.compile): one per mode (train, validation) and
        none more after the first batches; None when the step runs eagerly."""
        return runtime.compiled_graphs() - self.graphs_before if self.compile_mode is not None else None

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
                    noise_scale.measure_during_training(self)
                waited = time.perf_counter()
                batch = next(loader)
                line = self.step(indices, epoch, batch, part, wait=time.perf_counter() - waited)
                step = state.step
                self.recorder.step_done(
                    line, epoch, train["epochs"], sampler.position, len(sampler), train["log_every"]
                )
                if self.due(train["validations_per_epoch"], state.validations) or self.closing_validation_due(epoch):
                    validation.validation_point(self)
                epoch_ends = sampler.position == len(sampler)  # checkpointed after the epoch line
                signalled = self.signalled()
                stop = signalled is not None or (line is not None and stop_after is not None and step >= stop_after)
                if ((line is not None and step % train["checkpoint_every"] == 0) or stop) and not epoch_ends:
                    resume.save(self, "stop requested" if stop else "periodic")
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
    threads = runtime.resolve_threads(train["threads"], args.threads)
    device = runtime.resolve_device(train["device"], args.gpus, train["cpu_fallback"])
    world = distributed.init(device.type)
    recorder = Recorder(world.is_main)
    device, threads = distributed.place(device, threads, world)
    torch.set_num_threads(threads)
    if train["device"] == "auto" and device.type == "cpu":
        given = f" although the job was given {args.gpus} GPU(s) (train.cpu_fallback)" if args.gpus else ""
        recorder.say(f"train.device auto: no CUDA device visible{given}, training on the CPU")
    runtime.seed_everything(seed)

    trainer = Trainer(args, settings, device, threads, seed, world)
    trainer.stop_signals = StopSignals(train["stop_signals"])
    with trainer.stop_signals:
        return _train(trainer, args, train, device, world, seed, threads)


def _train(trainer: Trainer, args, train: dict, device, world: World, seed: int, threads: int) -> int:
    resume.resume(trainer)
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
        kept = head_refit.refit_head(trainer) if train["head_refit"] == "regression" else None
        outputs.write_outputs(trainer, kept)
        trainer.recorder.say(f"wrote {args.out}")
    distributed.barrier()
    distributed.finish()
    return 0
