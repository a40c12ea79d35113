"""`seqsetvae train`: train SeqSetVAE at one batch size, resumably.

    seqsetvae train --settings JSON --shards DIR --embedding F --batch-size B \
        --out results/runs/bsB --threads N

Writes into --out: metrics.json (the run's summary), metrics.jsonl (one line per step and
per epoch), best.safetensors (weights of the best validation AUROC), final.safetensors,
run_config.json, and checkpoints/ (see `seqsetvae.training.checkpoint`). A job killed and
started again resumes from its last checkpoint and, on CPU, ends with the same weights as
an uninterrupted run. Checkpoints of a different configuration (see `fingerprint`) are
set aside, never resumed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path, write_json
from seqsetvae.settings import load_settings
from seqsetvae.training import checkpoint as ckpt
from seqsetvae.training.memory import cuda_peaks_mb, peak_rss_mb
from seqsetvae.training.sampler import LengthGroupedBatchSampler

# train keys that do not change what is computed: a checkpoint written under other
# values of these is resumed all the same
_NOT_IN_FINGERPRINT = {"batch_sizes", "threads", "log_every", "checkpoint_every"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqsetvae train", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="{}", help="JSON with the model and train sections")
    parser.add_argument("--shards", required=True, help="shards directory (results/shards)")
    parser.add_argument("--embedding", required=True, help="embedding.safetensors")
    parser.add_argument("--batch-size", type=int, required=True, help="patients per batch")
    parser.add_argument("--out", required=True, help="run directory (results/runs/bsB)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads when train.threads is null")
    parser.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        help="debug: checkpoint and stop after this many steps in total (no outputs written)",
    )
    return parser


# -- setup ----------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("configuration key train.device: cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_threads(configured: int | None, given: int | None) -> int:
    """train.threads, else the job's --threads, capped at the CPUs this process may use."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(configured or given or available, available))


def scaled_lr(train: dict, batch_size: int) -> float:
    """train.lr scaled with the batch size: none, linear or sqrt in B / reference."""
    power = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[train["lr_scaling"]]
    return train["lr"] * (batch_size / train["lr_reference_batch_size"]) ** power


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(settings: dict, batch_size: int, shards: Path, embedding: Path, device: torch.device) -> str:
    """What a checkpoint must match to be resumed: settings, batch size, data, device."""
    train = {k: v for k, v in settings["train"].items() if k not in _NOT_IN_FINGERPRINT}
    index = shards / "index.json"
    payload = {
        "model": settings["model"],
        "train": train,
        "batch_size": batch_size,
        "shards_index": file_sha256(index) if index.exists() else None,
        "embedding": file_sha256(embedding),
        "device": device.type,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_embedding(path: Path) -> torch.Tensor:
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises several types for a bad file
        raise InputError(f"{path}: not a readable safetensors file ({error})") from error
    if "embedding" not in tensors or tensors["embedding"].ndim != 2:
        raise InputError(f"{path}: expected a 2-D tensor named 'embedding', found {sorted(tensors)}")
    return tensors["embedding"].float()


def build_optimizer(model, train: dict, lr: float):
    """AdamW over the model's parameter groups (SetVAE encoder at lr x setvae_lr_factor)."""
    groups = model.parameter_groups(lr=lr, setvae_lr_factor=train["setvae_lr_factor"])
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=train["weight_decay"], betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer,
        T_0=train["scheduler_t0"],
        T_mult=train["scheduler_t_mult"],
        eta_min=lr * train["eta_min_factor"],
    )
    return optimizer, scheduler


# -- validation -----------------------------------------------------------------------


@torch.no_grad()
def validate(model, batches, batch_size: int, train: dict, device, autocast, step: int) -> dict:
    """Loss (evaluation weights), AUROC and AUPRC over a split, in length order."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if len(batches) == 0:
        return {"val_loss": None, "val_auroc": None, "val_auprc": None}
    sampler = LengthGroupedBatchSampler(
        batches.lengths,
        batch_size,
        mega_batch_factor=train["mega_batch_factor"],
        max_events_per_batch=train["max_events_per_batch"],
        shuffle=False,
    )
    model.eval()
    loss_sum, order, scores = 0.0, [], []
    for indices in sampler.batches(0):
        batch = batches(indices).to(device)
        with autocast():
            out = model(batch, step)
        loss_sum += float(out.loss) * len(indices)
        scores.append(torch.softmax(out.logits.float(), dim=-1)[:, 1].cpu().numpy())
        order.append(indices)
    model.train()
    labels = batches.labels[np.concatenate(order)]
    scores = np.concatenate(scores)
    both_classes = len(np.unique(labels)) == 2
    return {
        "val_loss": loss_sum / len(labels),
        "val_auroc": float(roc_auc_score(labels, scores)) if both_classes else None,
        "val_auprc": float(average_precision_score(labels, scores)) if labels.any() else None,
    }


# -- the run --------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fresh_state() -> dict:
    return {
        "step": 0,
        "wall_time_s": 0.0,  # before this process (resumed runs)
        "train_time_s": 0.0,
        "patients": 0,
        "events": 0,
        "event_slots": 0,  # padded event slots the set encoder processed
        "largest_batch": {"patients": 0, "events": 0, "sets": 0},
        "epoch_loss_sum": 0.0,
        "epoch_patients": 0,
        "best": {"epoch": None, "val_auroc": None, "val_loss": None},
        "metrics_bytes": 0,
        "complete": False,
    }


def _is_better(result: dict, best: dict) -> bool:
    """Higher validation AUROC wins; without AUROC (one class), lower loss."""
    if best["epoch"] is None:
        return True
    key = lambda r: (-math.inf if r["val_auroc"] is None else r["val_auroc"], -(r["val_loss"] or 0.0))  # noqa: E731
    return key(result) > key(best)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings(args.settings)
    model_settings, train = settings["model"], settings["train"]
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    shards, embedding_path, out = Path(args.shards), Path(args.embedding), Path(args.out)
    started = time.perf_counter()

    threads = resolve_threads(train["threads"], args.threads)
    torch.set_num_threads(threads)
    device = resolve_device(train["device"])
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if train["precision"] == "bf16"
        else nullcontext
    )
    seed_everything(train["seed"])

    from seqsetvae.model import ModelConfig, SeqSetVAE
    from seqsetvae.training.dataset import ShardBatches

    embedding = load_embedding(embedding_path)
    train_batches = ShardBatches(str(shards), "train")
    valid_batches = ShardBatches(str(shards), "valid")
    vocab_size = train_batches.reader.vocab_size
    if embedding.shape[0] != vocab_size:
        raise InputError(
            f"{embedding_path}: embedding has {embedding.shape[0]} rows but the shards in {shards} "
            f"have a vocabulary of {vocab_size} variables"
        )
    if len(train_batches) == 0:
        raise InputError(f"{shards}/train: the train split has no patients")

    lr = scaled_lr(train, args.batch_size)
    model = SeqSetVAE(ModelConfig.from_settings(model_settings), embedding).to(device)
    optimizer, scheduler = build_optimizer(model, train, lr)
    sampler = LengthGroupedBatchSampler(
        train_batches.lengths,
        args.batch_size,
        mega_batch_factor=train["mega_batch_factor"],
        max_events_per_batch=train["max_events_per_batch"],
        seed=train["seed"],
    )

    # -- resume ------------------------------------------------------------------------
    ckpt_dir = out / "checkpoints"
    print_ = fingerprint(settings, args.batch_size, shards, embedding_path, device)
    state = _fresh_state()
    latest = ckpt.latest_checkpoint(ckpt_dir)
    if latest is not None:
        saved = json.loads((latest / "state.json").read_text())
        if saved.get("fingerprint") == print_:
            saved = ckpt.load_checkpoint(latest, model)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            sampler.load_state_dict(saved["sampler"])
            ckpt.set_rng_state(saved["rng"], device)
            state = saved["run"]
            _log(f"resuming from {latest} (step {state['step']}, epoch {sampler.epoch + 1})")
        else:
            stale = ckpt_dir.with_name(f"checkpoints.stale-{int(time.time())}")
            _log(f"checkpoints in {ckpt_dir} were written under another configuration: moved to {stale}")
            shutil.move(str(ckpt_dir), str(stale))
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    # the working metrics log lives beside the checkpoints, cut back to the checkpoint's
    # length so that steps redone after a resume are not logged twice
    log_path = ckpt_dir / "metrics.jsonl"
    with open(log_path, "ab") as f:
        f.truncate(state["metrics_bytes"])
    metrics_log = open(log_path, "a")

    def save(note: str) -> None:
        metrics_log.flush()
        state["metrics_bytes"] = log_path.stat().st_size
        state["wall_time_s"] += time.perf_counter() - segment_start
        segment_reset()
        ckpt.save_checkpoint(
            ckpt_dir,
            state["step"],
            model,
            {
                "fingerprint": print_,
                "run": state,
                "sampler": sampler.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": ckpt.rng_state(device),
            },
        )
        if not sys.stderr.isatty():
            _log(f"checkpoint at step {state['step']} ({note})")

    segment_start = started

    def segment_reset() -> None:
        nonlocal segment_start
        segment_start = time.perf_counter()

    def write(record: dict) -> None:
        metrics_log.write(json.dumps(record, allow_nan=False) + "\n")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tty = sys.stderr.isatty()
    _log(
        f"training batch size {args.batch_size} on {device.type} ({threads} threads, {train['precision']}), "
        f"{len(train_batches)} train / {len(valid_batches)} valid patients, {train['epochs']} epochs, lr {lr:g}"
    )

    # -- epochs ------------------------------------------------------------------------
    model.train()
    while sampler.epoch < train["epochs"] and not state["complete"]:
        epoch = sampler.epoch
        bar = tqdm(total=len(sampler), initial=sampler.position, desc=f"epoch {epoch + 1}", disable=not tty)
        for indices in sampler:
            t0 = time.perf_counter()
            batch = train_batches(indices).to(device)
            with autocast():
                output = model(batch, state["step"])
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
            lr_now = max(group["lr"] for group in optimizer.param_groups)  # the main group
            optimizer.step()
            scheduler.step()
            terms = {k: float(getattr(output, k).detach()) if torch.is_tensor(getattr(output, k)) else float(getattr(output, k)) for k in ("loss", "recon", "kl", "ce", "beta", "recon_weight", "pred_weight")}
            seconds = time.perf_counter() - t0  # float() above waited for the device
            if not all(math.isfinite(v) for v in terms.values()):
                raise FloatingPointError(f"non-finite loss at step {state['step']}: {terms}")

            n_patients, n_events, n_sets = batch.n_patients, batch.n_events, batch.n_sets
            state["step"] += 1
            state["train_time_s"] += seconds
            state["patients"] += n_patients
            state["events"] += n_events
            state["event_slots"] += n_events / float(batch.fill_ratio)
            state["epoch_loss_sum"] += terms["loss"] * n_patients
            state["epoch_patients"] += n_patients
            largest = state["largest_batch"]
            for key, value in (("patients", n_patients), ("events", n_events), ("sets", n_sets)):
                largest[key] = max(largest[key], int(value))
            write(
                {"kind": "step", "epoch": epoch + 1, "step": state["step"], **terms, "lr": lr_now,
                 "patients_per_s": n_patients / seconds, "events_per_s": n_events / seconds,
                 "fill_ratio": float(batch.fill_ratio), "sequence_fill_ratio": float(batch.sequence_fill_ratio),
                 "batch_patients": int(n_patients), "batch_events": int(n_events), "batch_sets": int(n_sets)}
            )  # fmt: skip
            bar.update(1)
            if tty:
                bar.set_postfix(loss=f"{terms['loss']:.3f}", pps=f"{n_patients / seconds:.1f}")
            elif state["step"] % train["log_every"] == 0:
                _log(
                    f"epoch {epoch + 1}/{train['epochs']} batch {sampler.position}/{len(sampler)} "
                    f"step {state['step']}: loss {terms['loss']:.4f} (recon {terms['recon']:.4f}, "
                    f"kl {terms['kl']:.4f}, ce {terms['ce']:.4f}) lr {lr_now:.3g}, "
                    f"{n_patients / seconds:.1f} patients/s"
                )
            epoch_ends = sampler.position == len(sampler)  # saved after validation instead
            if state["step"] % train["checkpoint_every"] == 0 and not epoch_ends:
                save("periodic")
            if args.stop_after_steps is not None and state["step"] >= args.stop_after_steps:
                if state["step"] % train["checkpoint_every"] != 0 or epoch_ends:
                    save("stop requested")
                bar.close()
                metrics_log.close()
                _log(f"stopped after {state['step']} steps (--stop-after-steps); outputs not written")
                return 0
        bar.close()

        result = validate(model, valid_batches, args.batch_size, train, device, autocast, state["step"])
        train_loss = state["epoch_loss_sum"] / max(state["epoch_patients"], 1)
        record = {"kind": "epoch", "epoch": epoch + 1, "step": state["step"], "train_loss": train_loss, **result}
        record["wall_time_s"] = state["wall_time_s"] + time.perf_counter() - segment_start
        write(record)
        _log(
            f"epoch {epoch + 1}/{train['epochs']} done: train loss {train_loss:.4f}, "
            f"val loss {result['val_loss']}, AUROC {result['val_auroc']}, AUPRC {result['val_auprc']}"
        )
        if _is_better(result, state["best"]):
            state["best"] = {"epoch": epoch + 1, "val_auroc": result["val_auroc"], "val_loss": result["val_loss"]}
            ckpt.save_weights(model, ckpt_dir / "best.safetensors", {"epoch": epoch + 1, "step": state["step"]})
        state["epoch_loss_sum"], state["epoch_patients"] = 0.0, 0
        state["complete"] = sampler.epoch >= train["epochs"]
        save(f"end of epoch {epoch + 1}")
    metrics_log.close()

    # -- outputs -------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.jsonl") as tmp:
        shutil.copyfile(log_path, tmp)
    with atomic_path(out / "best.safetensors") as tmp:
        shutil.copyfile(ckpt_dir / "best.safetensors", tmp)
    ckpt.save_weights(model, out / "final.safetensors", {"epoch": sampler.epoch, "step": state["step"]})
    write_json(
        out / "run_config.json",
        {
            "model": model_settings,
            "train": train,
            "batch_size": args.batch_size,
            "vocab_size": int(vocab_size),
            "embedding_dim": int(embedding.shape[1]),
            "seed": train["seed"],
            "lr": lr,
        },
    )
    allocated, reserved = cuda_peaks_mb(device)
    train_time = state["train_time_s"]
    write_json(
        out / "metrics.json",
        {
            "batch_size": args.batch_size,
            "patients_per_s": state["patients"] / train_time,
            "events_per_s": state["events"] / train_time,
            "fill_ratio": state["events"] / state["event_slots"],
            "wall_time_s": state["wall_time_s"] + time.perf_counter() - segment_start,
            "train_time_s": train_time,
            "epochs": train["epochs"],
            "steps": state["step"],
            "patients_seen": state["patients"],
            "events_seen": state["events"],
            "peak_rss_mb": peak_rss_mb(),
            "cuda_max_allocated_mb": allocated,
            "cuda_max_reserved_mb": reserved,
            "device": device.type,
            "threads": threads,
            "precision": train["precision"],
            "torch_version": torch.__version__,
            "best_epoch": state["best"]["epoch"],
            "best_val_auroc": state["best"]["val_auroc"],
            "largest_batch": state["largest_batch"],
            "lr": lr,
            "max_events_per_batch": train["max_events_per_batch"],
        },
    )
    _log(f"wrote {out}")
    return 0
