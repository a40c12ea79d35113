"""`seqsetvae pretrain`: the set VAE trained alone (the original's SetVAE pretraining
stage), and the strict loading that `train` starts from.

    seqsetvae pretrain --settings JSON --shards DIR --embedding F --out results/pretrain --threads N

Every set of every train-split patient is an item: encoded, sampled and decoded from its
own latent (`SeqSetVAE.set_vae_loss`), with no sequence model and no label. Batches are
`pretrain.batch_size` patients, length-grouped as in training; AdamW over the set VAE's
parameters alone, a linear warm-up then a cosine to 0; the KL weight rises from 0 to
`model.max_beta`. Writes `setvae.safetensors` (the set VAE's tensors only) and
`metrics.json` (the train losses per epoch, the validation split's at the end).
docs/training.md#pretraining-the-set-vae describes the stage.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from seqsetvae.errors import InputError
from seqsetvae.io import load_safetensors, write_json
from seqsetvae.runtime import device as runtime
from seqsetvae.runtime.sampler import LengthGroupedBatchSampler
from seqsetvae.runtime.weights import save_tensors
from seqsetvae.settings import load_settings
from seqsetvae.training.schedule import lr_factor, ramp

WEIGHTS_FILE = "setvae.safetensors"


def set_vae_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict entries of the set VAE (`SeqSetVAE.SET_VAE_MODULES`)."""
    return {k: v for k, v in model.state_dict().items() if k.split(".")[0] in model.SET_VAE_MODULES}


def load_pretrained(model: torch.nn.Module, path: str | Path) -> None:
    """Load a pretraining stage's weights into `model`'s set VAE, strictly: the file must
    hold every set VAE tensor of the model, nothing else, each of the model's shape; else
    an InputError naming the keys that differ."""
    tensors = load_safetensors(path, written_by="pretrain")
    expected = set_vae_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{k} {tuple(tensors[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
        for k in sorted(set(expected) & set(tensors))
        if tensors[k].shape != expected[k].shape
    ]
    problems = [
        f"{what} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    if problems:
        raise InputError(
            f"{path}: the pretrained set VAE does not fit this model ({'; '.join(problems)}); "
            "was it pretrained with another model section? Rerun the pretrain rule"
        )
    with torch.no_grad():
        for key, value in expected.items():
            value.copy_(tensors[key])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqsetvae pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="{}", help="JSON with the model, pretrain and train sections")
    parser.add_argument("--shards", required=True, help="shards directory (results/shards)")
    parser.add_argument("--embedding", required=True, help="embedding.safetensors")
    parser.add_argument("--out", required=True, help="output directory (results/pretrain)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads when train.threads is null")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs the job was given")
    return parser


def mean_losses(model, batches, indices: list[np.ndarray], beta: float, device) -> dict[str, float]:
    """Set-weighted mean Chamfer and KL of the posterior means over `indices`' batches."""
    totals, sets = np.zeros(2), 0
    model.eval()
    with torch.no_grad():
        for chunk in indices:
            batch = batches(chunk).to(device)
            _, recon, kl = model.set_vae_loss(batch, beta)
            totals += batch.n_sets * np.array([float(recon), float(kl)])
            sets += batch.n_sets
    model.train()
    return {"recon": totals[0] / max(sets, 1), "kl": totals[1] / max(sets, 1)}


def fit(model, batches, pretrain: dict, max_beta: float, mega_batch_factor: int, device) -> dict:
    """Train `model`'s set VAE for `pretrain.epochs` over `batches` (the train split);
    returns the steps, the skipped batches and each epoch's mean train losses."""
    n = len(batches)
    parameters = [p for k, p in model.named_parameters() if k.split(".")[0] in model.SET_VAE_MODULES]
    optimizer = torch.optim.AdamW(parameters, lr=pretrain["lr"], weight_decay=pretrain["weight_decay"])
    schedule = {"lr_schedule": "cosine", "lr_warmup_epochs": pretrain["lr_warmup_epochs"], "eta_min_factor": 0.0}
    schedule["epochs"] = pretrain["epochs"]
    sampler = LengthGroupedBatchSampler(
        batches.lengths, pretrain["batch_size"], mega_batch_factor=mega_batch_factor, seed=pretrain["seed"]
    )
    seen, step, skipped, epochs = 0, 0, 0, []
    model.train()
    for epoch in range(math.ceil(pretrain["epochs"])):
        totals, sets = np.zeros(2), 0
        for indices in sampler.batches(epoch):
            if seen >= pretrain["epochs"] * n:
                break
            batch = batches(indices).to(device)
            beta = max_beta * ramp(seen / n, pretrain["beta_warmup_epochs"])
            for group in optimizer.param_groups:
                group["lr"] = pretrain["lr"] * lr_factor(schedule, step + 1, (seen + len(indices)) / n)
            loss, recon, kl = model.set_vae_loss(batch, beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, pretrain["grad_clip"])
            seen += len(indices)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):  # no step: the weights stay finite
                skipped += 1
                continue
            optimizer.step()
            step += 1
            totals += batch.n_sets * np.array([float(recon.detach()), float(kl.detach())])
            sets += batch.n_sets
        epochs.append({"epoch": epoch + 1, "recon": totals[0] / max(sets, 1), "kl": totals[1] / max(sets, 1)})
        print(f"epoch {epoch + 1}: train Chamfer {epochs[-1]['recon']:.4f}, KL {epochs[-1]['kl']:.4f}")
    return {"steps": step, "skipped_batches": skipped, "epochs": epochs}


def main(argv: list[str]) -> int:
    from seqsetvae.model import ModelConfig, SeqSetVAE
    from seqsetvae.runtime.dataset import ShardBatches

    args = build_parser().parse_args(argv)
    settings = load_settings(args.settings)
    pretrain, train, model_settings = settings["pretrain"], settings["train"], settings["model"]
    if not pretrain["epochs"] > 0:
        raise InputError("pretrain.epochs is 0: there is nothing to pretrain (set it above 0)")
    threads = runtime.resolve_threads(train["threads"], args.threads)
    torch.set_num_threads(threads)
    device = runtime.resolve_device(train["device"], args.gpus, train["cpu_fallback"])
    runtime.seed_everything(pretrain["seed"])

    embedding = runtime.load_embedding(Path(args.embedding))
    batches = ShardBatches(args.shards, "train")
    if embedding.shape[0] != batches.reader.vocab_size:
        raise InputError(
            f"{args.embedding}: embedding has {embedding.shape[0]} rows but the shards in "
            f"{args.shards} have a vocabulary of {batches.reader.vocab_size} variables"
        )
    n = len(batches)
    if n == 0:
        raise InputError(f"{args.shards}/train: the train split has no patients")
    model = SeqSetVAE(ModelConfig.from_settings(model_settings), embedding).to(device)
    print(
        f"pretraining the set VAE on {n} train patients ({int(batches.reader.n_sets.sum())} sets) "
        f"for {pretrain['epochs']:g} epochs, batch size {pretrain['batch_size']}, peak lr {pretrain['lr']:g}"
    )
    start = time.perf_counter()
    progress = fit(model, batches, pretrain, model_settings["max_beta"], train["mega_batch_factor"], device)
    skipped = progress["skipped_batches"]
    if skipped > train["max_skipped_batches"]:
        raise InputError(
            f"pretrain: {skipped} batches had a non-finite loss or gradient (train.max_skipped_batches "
            f"{train['max_skipped_batches']}); lower pretrain.lr or check the shards"
        )

    valid = ShardBatches(args.shards, "valid")
    chunks = np.array_split(np.arange(len(valid)), max(1, math.ceil(len(valid) / pretrain["batch_size"])))
    held_out = mean_losses(model, valid, chunks, model_settings["max_beta"], device) if len(valid) else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(set_vae_tensors(model), out / WEIGHTS_FILE, {"pretrain": pretrain, "model": model_settings})
    write_json(
        out / "metrics.json",
        {"train_patients": n, **progress, "valid": held_out, "wall_time_s": time.perf_counter() - start},
    )
    if held_out is not None:
        print(f"validation Chamfer {held_out['recon']:.4f}, KL {held_out['kl']:.4f}")
    print(f"wrote {out / WEIGHTS_FILE}")
    return 0
