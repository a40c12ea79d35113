"""What a finished training run leaves in its directory (docs/outputs.md): metrics.json,
metrics.jsonl, best and final weights, run_config.json."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from seqsetvae.io import atomic_path, write_json
from seqsetvae.runtime.device import machine
from seqsetvae.runtime.weights import save_weights
from seqsetvae.training import checkpoint as ckpt

if TYPE_CHECKING:
    from seqsetvae.training.train import Trainer


def write_outputs(trainer: Trainer, kept: Path | None = None) -> None:
    """The finished run's files (docs/outputs.md), from the trainer's state (rank 0);
    `kept`: the weights best.safetensors holds, when not the kept checkpoint's own (the
    head refit's)."""
    out, state, train = trainer.out, trainer.state, trainer.train
    with atomic_path(out / "metrics.jsonl") as tmp:
        shutil.copyfile(trainer.log_path, tmp)
    with atomic_path(out / "best.safetensors") as tmp:
        shutil.copyfile(kept or trainer.checkpoints / "best.safetensors", tmp)
    final_meta = {"epoch": trainer.sampler.epoch, "step": state.step, "epochs": trainer.epochs_done}
    save_weights(trainer.evaluated, out / "final.safetensors", final_meta)
    ckpt.prune(trainer.checkpoints, keep=1)  # the final one: a restarted finished run resumes it
    write_json(
        out / "run_config.json",
        {
            "model": trainer.settings["model"],
            "train": {key: value for key, value in train.items() if key != "lr_multiplier"},  # config keys only
            "batch_size": trainer.args.batch_size,
            "seed": trainer.seed,
            "vocab_size": int(trainer.vocab_size),
            "embedding_dim": int(trainer.embedding.shape[1]),
            "lr": trainer.lr,
            "lr_multiplier": trainer.lr_multiplier,
            "init_weights": trainer.args.init_weights,  # seqsetvae pretrain's set VAE, or None
        },
    )
    trainer.state.update_peaks(trainer.device)
    context = {
        "batch_size": trainer.args.batch_size,
        "seed": trainer.seed,
        "loader_workers": trainer.workers,
        "epochs": train["epochs"],
        "steps_per_epoch": state.step / train["epochs"],
        "train_patients": trainer.n_train,
        "device": trainer.device.type,
        "device_requested": train["device"],
        "devices": trainer.world.size,  # processes (ranks); throughput counts them all
        "machine": machine(trainer.device),
        "threads": trainer.threads,
        "precision": train["precision"],
        "compile": trainer.compile_mode,  # None: eager
        "compiled_graphs": trainer.graphs(),
        "torch_version": torch.__version__,
        "lr": trainer.lr,
        "lr_multiplier": trainer.lr_multiplier,
        "lr_scaling": train["lr_scaling"],
        "max_events_per_batch": train["max_events_per_batch"],
        "keep_weights": train["keep_weights"],  # which validation point `best` is
        "pretrained": trainer.args.init_weights is not None,  # the set VAE started from seqsetvae pretrain's
    }
    summary = state.summary(trainer.wall_time(), train["noise_scale"]["patients"])
    write_json(out / "metrics.json", {**context, **summary})
