#!/usr/bin/env python3
"""One training run on a development cohort's shards, with config overrides; prints and
appends its validation AUROC curve (the experiments of docs/learning_on_real_data.md).

    python scripts/tune_run.py --results work/dev/results --name tok_bal --batch-size 16 --seed 0 \
        --set '{"model": {"token": "value_and_variable"}, "train": {"class_weights": "balanced"}}'

The run trains on the cohort's train split and validates on its validation split (the
test split is never read). `--results` is a pipeline results folder after `snakemake
shards` (e.g. a development subset from `scripts/physionet2019.py --exclude`); the base
is `config.yaml`'s model and train sections. Runs go to `--out/NAME/bsB_sS`, one line per
run to `--out/log.txt`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one development run (shared with scripts/checkpoint_curve.py)."""
    parser.add_argument("--results", required=True, type=Path, help="the development cohort's results folder")
    parser.add_argument("--name", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", default="{}", help="JSON: {model: {...}, train: {...}} over config.yaml")
    parser.add_argument("--out", type=Path, default=Path("work/tuning"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init-weights", type=Path, default=None, help="`seqsetvae pretrain`'s setvae.safetensors")


def train_arguments(args: argparse.Namespace, out: Path) -> list[str]:
    """`seqsetvae train`'s arguments for the run: config.yaml's model and train sections
    with `--set` over them, 2 validations per epoch and no noise-scale measurements unless
    `--set` says otherwise."""
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    overrides = json.loads(args.set)
    model = {**base["model"], **overrides.get("model", {})}
    train = {k: v for k, v in base["train"].items() if k not in ("batch_sizes", "seeds")}
    train |= {"validations_per_epoch": 2, "noise_scale": {"per_epoch": 0}} | overrides.get("train", {})
    return [
        "--settings",
        json.dumps({"model": model, "train": train}),
        "--shards",
        str(args.results / "shards"),
        "--embedding",
        str(args.results / "embedding" / "embedding.safetensors"),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        *(["--init-weights", str(args.init_weights)] if args.init_weights else []),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add_run_arguments(parser)
    args = parser.parse_args()
    out = args.out / args.name / f"bs{args.batch_size}_s{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    subprocess.run(["seqsetvae", "train", *train_arguments(args, out)], check=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [round(r["val_auroc"], 3) for r in rows if r.get("val_auroc") is not None]
    best = json.loads((out / "metrics.json").read_text())["best_val_auroc"]
    line = f"{args.name} bs{args.batch_size} seed{args.seed} {time.time() - start:.0f}s best {best:.3f} curve {curve} set {args.set}"
    print(line)
    with open(args.out / "log.txt", "a") as log:
        log.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
