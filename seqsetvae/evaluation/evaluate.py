"""`seqsetvae evaluate`: test-split metrics of one trained run.

    seqsetvae evaluate --settings JSON --shards DIR --embedding F --weights best.safetensors \
        --run-config run_config.json --batch-size B --out eval/bsB.json \
        --predictions eval/bsB_predictions.parquet --threads N

The run's best checkpoint, in eval mode and without gradients, over the test split in
batches of the run's batch size (length-ordered, as in validation). Writes the metrics
JSON (see `evaluate_split` and docs/outputs.md) and one Parquet row per test patient:
`patient_id`, `label`, `probability` (of class 1), so every number can be recomputed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open

from seqsetvae.errors import DamagedFile, InputError
from seqsetvae.evaluation.metrics import ActiveUnits, bootstrap_unit, classification_metrics, clusters_of
from seqsetvae.io import atomic_path, read_json, write_json
from seqsetvae.model import LossWeights
from seqsetvae.runtime.memory import cuda_peaks_mb, peak_rss_mb
from seqsetvae.settings import load_settings

SPLIT = "test"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqsetvae evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="{}", help="JSON with the evaluate section")
    parser.add_argument("--shards", required=True, help="shards directory (results/shards)")
    parser.add_argument("--embedding", required=True, help="embedding.safetensors")
    parser.add_argument("--weights", required=True, help="the run's best.safetensors")
    parser.add_argument("--run-config", required=True, help="the run's run_config.json")
    parser.add_argument("--batch-size", type=int, required=True, help="patients per batch (the run's)")
    parser.add_argument("--out", required=True, help="metrics JSON (results/eval/bsB.json)")
    parser.add_argument("--predictions", required=True, help="per-patient predictions (Parquet)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads when train.threads is null")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs the job was given: with none visible, fail at once")
    parser.add_argument("--split", default=SPLIT, help=argparse.SUPPRESS)  # tests evaluate other splits
    parser.add_argument(
        "--bootstrap-unit",
        choices=("patient", "subject"),
        default=None,
        help="what the bootstrap resamples (default: evaluate.bootstrap_unit, auto resolved with data.format)",
    )
    return parser


def checkpoint_step(weights: Path) -> tuple[int | None, int | None]:
    """(epoch, step) a weights file was saved at, from its safetensors metadata."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as error:  # safetensors raises several types for a bad file
        raise DamagedFile(weights, f"not a readable safetensors file: {error}", "train") from None
    # `seqsetvae.training.checkpoint.save_weights` stores {"epoch", "step"} as one JSON string
    training = json.loads(meta["training"]) if "training" in meta else {}
    return training.get("epoch"), training.get("step")


def load_model(run_config: dict, embedding: torch.Tensor, weights: Path, device: torch.device):
    """The run's model with the weights of `weights`, in eval mode."""
    from seqsetvae.model import ModelConfig, SeqSetVAE
    from seqsetvae.runtime.weights import load_weights

    model = SeqSetVAE(ModelConfig.from_settings(run_config["model"]), embedding)
    try:
        load_weights(model, weights)
    except RuntimeError as error:  # strict loading: names or shapes differ
        raise InputError(f"{weights}: weights do not match the model of the run config ({error})") from None
    return model.to(device).eval()


@torch.no_grad()
def evaluate_split(model, batches, sampler, device: torch.device, autocast, weights) -> dict:
    """Run the model over every batch of `sampler`; return predictions and loss terms.

    Reconstruction and KL are means over every real set of the split (not means of
    batch means), so they do not depend on the batch size.
    """
    n = len(batches)
    probabilities, network = np.full(n, np.nan), None
    active = ActiveUnits()
    sets, recon_sum, kl_sum, kl_free_bits_sum = 0, 0.0, 0.0, 0.0
    largest = {"patients": 0, "events": 0, "sets": 0}
    seconds, events, n_batches = 0.0, 0, 0
    plan = sampler.batches(0)
    # one untimed pass over the first batch: one-off costs (CUDA context and kernels,
    # allocator growth, thread pools) are not inference throughput
    with autocast():
        model(batches(plan[0]).to(device), weights)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for indices in plan:
        t0 = time.perf_counter()
        batch = batches(indices).to(device)
        with autocast():
            out = model(batch, weights)
        probability = torch.softmax(out.logits.float(), dim=-1)[:, 1].cpu().numpy()  # waits for the device
        seconds += time.perf_counter() - t0
        probabilities[indices] = probability
        if out.paths is not None:  # wide_combine standardized or stacked: the network's own risks too
            network = np.full(n, np.nan) if network is None else network
            network[indices] = torch.softmax(out.paths[:, 0].float(), dim=-1)[:, 1].cpu().numpy()
        recon_sum += float(out.recon_per_set.float().sum())
        kl_sum += float(out.kl_raw_per_set.float().sum())
        kl_free_bits_sum += float(out.kl_per_set.float().sum())
        sets += batch.n_sets
        active.update(out.mu.float().cpu().numpy())
        events += batch.n_events
        n_batches += 1
        for key, value in (("patients", batch.n_patients), ("events", batch.n_events), ("sets", batch.n_sets)):
            largest[key] = max(largest[key], int(value))
    return {
        "probabilities": probabilities,
        "network_probabilities": network,
        "recon": recon_sum / sets,
        "kl": kl_sum / sets,
        "kl_free_bits": kl_free_bits_sum / sets,
        "active_units": active.summary(),
        "inference": {
            "patients_per_s": n / seconds,
            "events_per_s": events / seconds,
            "time_s": seconds,
            "batches": n_batches,
        },
        "largest_batch": largest,
    }


def network_alone(model, labels: np.ndarray, probabilities: np.ndarray | None) -> dict:
    """Under model.wide_combine: standardized or stacked, `{"network": {auroc, stack_weights}}`: how the
    network ranks on its own, and how much the stack leans on it; else nothing."""
    if probabilities is None:
        return {}
    from sklearn.metrics import roc_auc_score

    auroc = float(roc_auc_score(labels, probabilities)) if len(np.unique(labels)) == 2 else None
    return {"network": {"auroc": auroc, "stack_weights": [float(w) for w in model.classifier.stack_weights]}}


def write_predictions(path: str | Path, patient_ids: list[str], labels: np.ndarray, probabilities: np.ndarray) -> None:
    table = pa.table(
        {
            "patient_id": pa.array(patient_ids, type=pa.string()),
            "label": pa.array(labels, type=pa.int8()),
            "probability": pa.array(probabilities, type=pa.float64()),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def main(argv: list[str]) -> int:
    from seqsetvae.runtime.dataset import ShardBatches
    from seqsetvae.runtime.device import autocast, load_embedding, resolve_device, resolve_threads
    from seqsetvae.runtime.sampler import LengthGroupedBatchSampler

    args = build_parser().parse_args(argv)
    all_settings = load_settings(args.settings)
    settings = all_settings["evaluate"]
    unit = args.bootstrap_unit or bootstrap_unit(settings, all_settings["data"]["format"])
    run_config_path, weights = Path(args.run_config), Path(args.weights)
    run_config = read_json(run_config_path, written_by="train")
    missing = [k for k in ("model", "train", "batch_size") if k not in run_config]
    if missing:
        raise InputError(f"{run_config_path}: missing key(s) {', '.join(missing)}")
    if run_config["batch_size"] != args.batch_size:
        raise InputError(
            f"{run_config_path}: batch_size is {run_config['batch_size']}, but --batch-size is {args.batch_size}"
        )
    train = load_settings({"train": run_config["train"]})["train"]

    threads = resolve_threads(train["threads"], args.threads)
    torch.set_num_threads(threads)
    device = resolve_device(train["device"], args.gpus, train["cpu_fallback"])
    precision = autocast(train["precision"], device)
    torch.manual_seed(run_config.get("seed", 0))  # nothing should be random in eval mode; belt and braces

    batches = ShardBatches(str(args.shards), args.split)
    if len(batches) == 0:
        raise InputError(f"{args.shards}/{args.split}: the {args.split} split has no patients to evaluate")
    embedding = load_embedding(Path(args.embedding))
    epoch, step = checkpoint_step(weights)
    model = load_model(run_config, embedding, weights, device)
    sampler = LengthGroupedBatchSampler(
        batches.lengths,
        args.batch_size,
        mega_batch_factor=train["mega_batch_factor"],
        max_events_per_batch=train["max_events_per_batch"],
        shuffle=False,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model_settings = load_settings({"model": run_config["model"]})["model"]
    result = evaluate_split(model, batches, sampler, device, precision, LossWeights.at_evaluation(model_settings))
    allocated, reserved = cuda_peaks_mb(device)

    labels = batches.labels
    bad = np.flatnonzero(~np.isfinite(result["probabilities"]))
    if len(bad):  # a broken checkpoint, not bad input: stop before writing metrics of it
        ids = ", ".join(batches.reader.patient_ids[i] for i in bad[:10])
        raise FloatingPointError(f"{weights}: non-finite predictions for {len(bad)} test patient(s), e.g. {ids}")
    clusters = clusters_of(batches.reader.patient_ids, unit)
    metrics = classification_metrics(
        labels, result["probabilities"], settings["bootstrap_resamples"], settings["seed"], clusters
    )
    report = {
        "batch_size": args.batch_size,
        "seed": run_config.get("seed"),
        "split": args.split,
        "weights": str(weights),
        "checkpoint": {"epoch": epoch, "step": step},
        **metrics,
        "recon": result["recon"],
        "kl": result["kl"],
        "kl_free_bits": result["kl_free_bits"],
        "active_units": result["active_units"],
        **network_alone(model, labels, result["network_probabilities"]),
        "inference": result["inference"],
        "memory": {"peak_rss_mb": peak_rss_mb(), "cuda_max_allocated_mb": allocated, "cuda_max_reserved_mb": reserved},
        "largest_batch": result["largest_batch"],
        "device": device.type,
        "threads": threads,
        "precision": train["precision"],
        "torch_version": torch.__version__,
        "predictions": str(args.predictions),
    }
    write_predictions(args.predictions, list(batches.reader.patient_ids), labels, result["probabilities"])
    write_json(args.out, report)
    print(
        f"batch size {args.batch_size}: test AUROC {metrics['auroc']} {metrics['auroc_ci']}, "
        f"AUPRC {metrics['auprc']}, {result['inference']['patients_per_s']:.1f} patients/s -> {args.out}"
    )
    return 0
