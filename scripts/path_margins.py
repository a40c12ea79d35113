#!/usr/bin/env python3
"""The two paths of a trained run with `model.wide: summaries`, side by side on one split:
each path's margin spread (logit of class 1 minus class 0, its standard deviation over
the split's stays) and the AUROC of the network alone, the wide path alone, their plain
mean and the mean of the margins each divided by its spread
(docs/learning_rounds.md, round twelve).

    python scripts/path_margins.py --run results/runs/bs16/lr1/seed0 --results results --split valid
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from seqsetvae.evaluation.evaluate import load_model
from seqsetvae.model import LossWeights
from seqsetvae.runtime.dataset import ShardBatches
from seqsetvae.runtime.device import load_embedding
from seqsetvae.settings import load_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--results", required=True, type=Path)
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    parser.add_argument("--weights", default="best", choices=("best", "final"))
    args = parser.parse_args()
    run_config = json.loads((args.run / "run_config.json").read_text())
    if run_config["model"].get("wide") != "summaries":
        raise SystemExit(f"{args.run}: trained without model.wide: summaries; it has one path")
    embedding = load_embedding(args.results / "embedding" / "embedding.safetensors")
    model = load_model(run_config, embedding, args.run / f"{args.weights}.safetensors", torch.device("cpu"))
    margins = []  # per batch: [B, 2], the network's and the wide path's margins

    def both_paths(classifier, inputs, output):
        h, z, batch = inputs
        paths = [classifier.deep(h, z, batch), classifier.wide_logits(batch, h.dtype)]
        margins.append(torch.stack([p[:, 1] - p[:, 0] for p in paths], dim=1))

    model.classifier.register_forward_hook(both_paths)
    batches = ShardBatches(str(args.results / "shards"), args.split)
    weights = LossWeights.at_evaluation(load_settings({"model": run_config["model"]})["model"])
    with torch.no_grad():
        for start in range(0, len(batches), 64):
            model(batches(np.arange(start, min(start + 64, len(batches)))), weights)
    margin = torch.cat(margins).double().numpy()  # [N, 2]
    spread = margin.std(0)
    auroc = lambda score: roc_auc_score(batches.labels, score)  # noqa: E731
    print(
        f"{args.run} {args.weights} {args.split}: spread network {spread[0]:.3f} wide {spread[1]:.3f}; AUROC "
        f"network {auroc(margin[:, 0]):.4f}, wide {auroc(margin[:, 1]):.4f}, mean {auroc(margin.sum(1)):.4f}, "
        f"standardised mean {auroc((margin / spread).sum(1)):.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
