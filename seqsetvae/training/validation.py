"""Scoring a split during training, and which validation point's weights to keep
(train.keep_weights)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from seqsetvae.model import LossWeights
from seqsetvae.runtime.sampler import LengthGroupedBatchSampler
from seqsetvae.runtime.weights import save_weights

if TYPE_CHECKING:
    from seqsetvae.training.train import Trainer

VALIDATION_BATCH_SIZE = 16  # patients per validation batch at the least (train.max_events_per_batch still caps it)


def length_ordered(batches, batch_size: int, train: dict) -> LengthGroupedBatchSampler:
    """A split's batches for inference: sorted by length, no shuffling, train's batch limits."""
    return LengthGroupedBatchSampler(
        batches.lengths,
        batch_size,
        mega_batch_factor=train["mega_batch_factor"],
        max_events_per_batch=train["max_events_per_batch"],
        shuffle=False,
    )


@torch.no_grad()
def validate(model, batches, batch_size: int, train: dict, device, autocast, weights) -> dict:
    """Loss (evaluation weights), the probabilities' cross-entropy, AUROC and AUPRC over a
    split, in length order. Under `model.wide_combine: standardized` or `stacked` the split first fits the
    model's stack (Classifier.fit_stack), and the scores are the refitted stack's; the
    network's own AUROC and the stack's weights join the result."""
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    if len(batches) == 0:
        return {"val_loss": None, "val_ce": None, "val_auroc": None, "val_auprc": None}
    sampler = length_ordered(batches, batch_size, train)
    model.eval()
    loss_sum, order, logits, paths = 0.0, [], [], []
    for indices in sampler.batches(0):
        batch = batches(indices).to(device)
        with autocast():
            out = model(batch, weights)
        loss_sum += float(out.loss) * len(indices)
        logits.append(out.logits.float().cpu())
        if out.paths is not None:
            paths.append(out.paths.float().cpu())
        order.append(indices)
    model.train()
    labels = batches.labels[np.concatenate(order)]
    logits = torch.cat(logits)
    both_classes = len(np.unique(labels)) == 2
    combination = {}
    if paths:
        paths = torch.cat(paths)
        classifier = model.classifier
        classifier.fit_stack(paths, torch.from_numpy(labels))
        logits = classifier.stack(paths.to(classifier.stack_weights.device)).float().cpu()
        network = torch.softmax(paths[:, 0], dim=-1)[:, 1].numpy()
        combination = {
            "val_auroc_network": float(roc_auc_score(labels, network)) if both_classes else None,
            "stack_weights": [round(float(w), 6) for w in classifier.stack_weights],
        }
    scores = torch.softmax(logits, dim=-1)[:, 1].numpy()
    return {
        "val_loss": loss_sum / len(labels),
        # of the probabilities as they are (no label smoothing, no class weights): what
        # train.keep_weights: lowest_cross_entropy reads
        "val_ce": float(log_loss(labels, scores.astype(np.float64), labels=[0, 1])),
        "val_auroc": float(roc_auc_score(labels, scores)) if both_classes else None,
        "val_auprc": float(average_precision_score(labels, scores)) if labels.any() else None,
        **combination,
    }


def is_better(result: dict, best: dict, rule: str = "best_auroc") -> bool:
    """Whether a validation point's weights replace the kept ones under `rule`
    (train.keep_weights: best_auroc, lowest_cross_entropy or last); no validation split: the latest."""
    if rule == "last" or best["validation"] is None or result["val_loss"] is None:
        return True
    auroc = lambda r: -math.inf if r["val_auroc"] is None else r["val_auroc"]  # noqa: E731
    if rule == "lowest_cross_entropy" and best.get("val_ce") is not None:
        return (-result["val_ce"], auroc(result)) > (-best["val_ce"], auroc(best))
    return (auroc(result), -result["val_loss"]) > (auroc(best), -best["val_loss"])


def validation_point(trainer: Trainer) -> None:
    """A training run's validation point: score the validation split with the weights it
    evaluates, log the point, keep the best weights (rank 0; the other ranks count it)."""
    state = trainer.state
    if not trainer.world.is_main:
        state.validations += 1
        return
    # inference: a patient's output does not depend on its batch-mates, so validation
    # batches are at least VALIDATION_BATCH_SIZE patients (batch size 1 validated one
    # patient per forward, a sixth of its run's time on the default data)
    result = validate(
        trainer.evaluated,
        trainer.valid_batches,
        max(trainer.args.batch_size, VALIDATION_BATCH_SIZE),
        trainer.train,
        trainer.device,
        trainer.autocast,
        LossWeights.at_evaluation(trainer.settings["model"]),
    )
    if trainer.evaluated is not trainer.model and "stack_weights" in result:
        # the raw weights carry the stack too, or the weight average would pull it back
        for name in ("stack_weights", "stack_bias"):
            getattr(trainer.model.classifier, name).copy_(getattr(trainer.evaluated.classifier, name))
    state.validations += 1
    train_loss = state.take_loss()
    line = {
        "kind": "validation",
        "validation": state.validations,
        "step": state.step,
        "samples": state.patients,
        "epochs": trainer.epochs_done,
        "train_loss": train_loss,
        **result,
        "train_time_s": state.train_time_s,
        "wall_time_s": trainer.wall_time(),
    }
    trainer.recorder.record(line)
    if is_better(result, state.best, trainer.train["keep_weights"]):
        epoch, step = trainer.sampler.epoch + (trainer.sampler.position > 0), state.step
        state.best = {"validation": state.validations, "epoch": epoch, "step": step, **result}
        for key in ("val_auprc", "val_auroc_network", "stack_weights"):
            state.best.pop(key, None)
        save_weights(
            trainer.evaluated,
            trainer.checkpoints / "best.safetensors",
            {"epoch": epoch, "step": step, "epochs": trainer.epochs_done},
        )
    trainer.recorder.note(
        f"validation {state.validations} at {trainer.epochs_done:.2f} epochs (step {state.step}): "
        f"val loss {result['val_loss']}, AUROC {result['val_auroc']}, AUPRC {result['val_auprc']}"
    )
