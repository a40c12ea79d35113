#!/usr/bin/env python3
"""AUROC of a trained run with `model.wide: summaries` through each path alone: the
other path's last Linear set to zero (docs/learning_rounds.md, round six).

    python scripts/ablate_paths.py --run results/runs/bs16/lr1/seed0 --results results --split valid

`--run` holds the run's `best.safetensors` (or, with `--weights final`, the last
weights, `final.safetensors`) and `run_config.json`; `--results` the
shards and embedding it trained on. Prints one line: AUROC with both paths, the deep
path alone and the wide path alone.
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
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--weights", default="best", choices=("best", "final"), help="the best validation point's or the last ones"
    )
    args = parser.parse_args()
    run_config = json.loads((args.run / "run_config.json").read_text())
    if run_config["model"].get("wide") != "summaries":
        raise SystemExit(f"{args.run}: trained without model.wide: summaries; nothing to ablate")
    embedding = load_embedding(args.results / "embedding" / "embedding.safetensors")
    batches = ShardBatches(str(args.results / "shards"), args.split)
    weights = LossWeights.at_evaluation(load_settings({"model": run_config["model"]})["model"])
    aurocs = {}
    for name in ("both", "deep", "wide"):
        model = load_model(run_config, embedding, args.run / f"{args.weights}.safetensors", torch.device("cpu"))
        silenced = {"deep": model.classifier.wide[-1], "wide": model.classifier.mlp[-1]}.get(name)
        probabilities = np.empty(len(batches))
        with torch.no_grad():
            if silenced is not None:
                silenced.weight.zero_()
                silenced.bias.zero_()
            for start in range(0, len(batches), args.batch_size):
                rows = np.arange(start, min(start + args.batch_size, len(batches)))
                probabilities[rows] = torch.softmax(model(batches(rows), weights).logits, -1)[:, 1].numpy()
        aurocs[name] = roc_auc_score(batches.labels, probabilities)
    print(
        f"{args.run} {args.weights} {args.split}: " + ", ".join(f"{name} {auroc:.4f}" for name, auroc in aurocs.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
