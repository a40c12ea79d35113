#!/usr/bin/env python3
"""One development run that keeps the weights of every validation point, then scores
each point on the validation and test splits: which checkpoint rule holds out of sample
(docs/learning_rounds.md, round nine).

    python scripts/checkpoint_curve.py --results work/dev/results --name recipe --batch-size 16 --seed 0

For a development cohort only: it reads the test split of `--results` at every point,
which no choice on an acceptance cohort may do. The run is `scripts/tune_run.py`'s (the
model and train sections of config.yaml, `--set` over them) trained in this process, with
the averaged weights the run validates saved at each point as `points/NN.safetensors`.
Prints one line per point (validation AUROC and cross-entropy, test AUROC) and the point
each rule picks: the best validation AUROC (the default), the lowest validation
cross-entropy, the best three-point running mean of validation AUROC, and the last.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score
from tune_run import add_run_arguments, train_arguments  # scripts/, this script's folder

from seqsetvae.evaluation.evaluate import load_model
from seqsetvae.model import LossWeights
from seqsetvae.runtime.dataset import ShardBatches
from seqsetvae.runtime.device import load_embedding
from seqsetvae.runtime.weights import save_weights
from seqsetvae.settings import load_settings
from seqsetvae.training import train, validation


def scores(model, batches: ShardBatches, weights: LossWeights, batch_size: int = 64) -> np.ndarray:
    """Each patient's probability of the positive class, in split order."""
    probabilities = np.empty(len(batches))
    with torch.no_grad():
        for start in range(0, len(batches), batch_size):
            rows = np.arange(start, min(start + batch_size, len(batches)))
            probabilities[rows] = torch.softmax(model(batches(rows), weights).logits, -1)[:, 1].numpy()
    return probabilities


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add_run_arguments(parser)
    args = parser.parse_args()
    out = args.out / args.name / f"bs{args.batch_size}_s{args.seed}"
    points = out / "points"
    points.mkdir(parents=True, exist_ok=True)

    validate_and_keep = validation.validation_point

    def keeping_every_point(trainer) -> None:
        validate_and_keep(trainer)
        save_weights(trainer.evaluated, points / f"{trainer.state.validations:02d}.safetensors", {})

    validation.validation_point = keeping_every_point
    if not (out / "run_config.json").exists():
        train.main(train_arguments(args, out))

    run_config = json.loads((out / "run_config.json").read_text())
    embedding = load_embedding(args.results / "embedding" / "embedding.safetensors")
    weights = LossWeights.at_evaluation(load_settings({"model": run_config["model"]})["model"])
    splits = {name: ShardBatches(str(args.results / "shards"), name) for name in ("valid", "test")}
    rows = []
    for path in sorted(points.glob("*.safetensors")):
        model = load_model(run_config, embedding, path, torch.device("cpu"))
        row = {"point": int(path.stem)}
        for name, batches in splits.items():
            probabilities = scores(model, batches, weights)
            row[f"{name}_auroc"] = roc_auc_score(batches.labels, probabilities)
            row[f"{name}_ce"] = log_loss(batches.labels, probabilities, labels=[0, 1])
        rows.append(row)
        print(
            f"point {row['point']:2d}: valid AUROC {row['valid_auroc']:.4f} CE {row['valid_ce']:.4f}, "
            f"test AUROC {row['test_auroc']:.4f}"
        )
    valid = np.array([r["valid_auroc"] for r in rows])
    running = np.convolve(np.pad(valid, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    picks = {
        "best_auroc": int(np.argmax(valid)),
        "lowest_ce": int(np.argmin([r["valid_ce"] for r in rows])),
        "running_auroc": int(np.argmax(running)),
        "last": len(rows) - 1,
    }
    summary = {rule: {"point": rows[i]["point"], "test_auroc": rows[i]["test_auroc"]} for rule, i in picks.items()}
    (out / "checkpoint_curve.json").write_text(json.dumps({"points": rows, "picks": summary}, indent=1))
    line = f"{args.name} bs{args.batch_size} seed{args.seed}: " + ", ".join(
        f"{rule} point {pick['point']} test {pick['test_auroc']:.4f}" for rule, pick in summary.items()
    )
    print(line)
    with open(args.out / "checkpoint_curves.txt", "a") as log:
        log.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
