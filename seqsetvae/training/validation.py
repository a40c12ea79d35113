"""Scoring a split during training, and which validation point's weights to keep."""

from __future__ import annotations

import math

import numpy as np
import torch

from seqsetvae.training.sampler import LengthGroupedBatchSampler


VALIDATION_BATCH_SIZE = 16  # patients per validation batch at the least (train.max_events_per_batch still caps it)


@torch.no_grad()
def validate(model, batches, batch_size: int, train: dict, device, autocast, weights) -> dict:
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
            out = model(batch, weights)
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


def is_better(result: dict, best: dict) -> bool:
    """Higher validation AUROC wins, ties to the lower loss; no validation: the latest."""
    if best["validation"] is None or result["val_loss"] is None:
        return True
    key = lambda r: (-math.inf if r["val_auroc"] is None else r["val_auroc"], -r["val_loss"])  # noqa: E731
    return key(result) > key(best)
