#!/usr/bin/env python3
"""Linear probes of a model's per-patient features: is the label in the network, and
where (docs/learning_rounds.md, round three)?

    python scripts/probe_features.py --results work/dev/results [--run work/dev/results/runs/bs16/seed0]
        [--set '{"token": "value_and_variable"}']

Builds the model of `--run` (its run_config.json and best.safetensors) or, without it, a
model with random initial weights from config.yaml's model section plus `--set`; runs it
in evaluation mode over the train and validation splits of `--results/shards`; fits a
logistic regression (standardised, balanced, C in 0.01 / 0.1 / 1) on each feature group
of the train split and prints the best validation AUROC. The test split is never read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from seqsetvae.model import ModelConfig, SeqSetVAE
from seqsetvae.runtime.dataset import ShardBatches
from seqsetvae.segments import segment_sum

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("log_counts", "mean_token", "mean_mu", "mean_h", "last_h")


@torch.no_grad()
def features(model: SeqSetVAE, batches: ShardBatches, vocab: int, batch_size: int = 64) -> dict[str, np.ndarray]:
    out = {name: [] for name in GROUPS}
    for start in range(0, len(batches), batch_size):
        batch = batches(np.arange(start, min(start + batch_size, len(batches))))
        tokens = model.tokens(batch)
        mu, _ = model.encoder(tokens, batch)
        h = model.sequence(mu, batch)
        per_patient = batch.sets_per_patient
        sets = per_patient.unsqueeze(-1).float()
        out["mean_mu"].append(segment_sum(mu, per_patient) / sets)
        out["mean_h"].append(segment_sum(h, per_patient) / sets)
        out["last_h"].append(h.index_select(0, torch.cumsum(per_patient, 0) - 1))
        set_tokens = segment_sum(tokens, batch.set_sizes) / batch.set_sizes.unsqueeze(-1).float()
        out["mean_token"].append(segment_sum(set_tokens, per_patient) / sets)
        event_patient = torch.repeat_interleave(batch.set_patient[: batch.n_sets], batch.set_sizes)
        counts = torch.zeros(len(per_patient), vocab).index_put_(
            (event_patient, batch.variable_ids), torch.ones(len(event_patient)), accumulate=True
        )
        out["log_counts"].append(torch.log1p(counts))
    return {name: torch.cat(rows).numpy() for name, rows in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--results", required=True, type=Path, help="a pipeline results folder (after its shards)")
    parser.add_argument("--run", type=Path, default=None, help="a training run's folder (default: random weights)")
    parser.add_argument("--set", default="{}", help="JSON over config.yaml's model section (random weights only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    embedding = load_file(str(args.results / "embedding" / "embedding.safetensors"))["embedding"]
    if args.run is not None:
        section = json.loads((args.run / "run_config.json").read_text())["model"]
    else:
        section = {**yaml.safe_load((ROOT / "config.yaml").read_text())["model"], **json.loads(args.set)}
    torch.manual_seed(args.seed)
    model = SeqSetVAE(ModelConfig.from_settings(section), embedding)
    if args.run is not None:
        model.load_state_dict(load_file(str(args.run / "best.safetensors")))
    model.eval()
    splits = {split: ShardBatches(str(args.results / "shards"), split) for split in ("train", "valid")}
    x = {split: features(model, batches, embedding.shape[0]) for split, batches in splits.items()}
    for name in GROUPS:
        best = 0.0
        for c in (0.01, 0.1, 1.0):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, class_weight="balanced"))
            probe.fit(x["train"][name], splits["train"].labels)
            scores = probe.predict_proba(x["valid"][name])[:, 1]
            best = max(best, roc_auc_score(splits["valid"].labels, scores))
        print(f"{name}: validation AUROC {best:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
