"""`seqsetvae choose-lr`: the peak learning rate of one batch size, chosen on validation data.

    seqsetvae choose-lr --batch-size B --grid 0.5 1 2 \
        --runs results/grid_runs/bsB/lr0.5/seed0/metrics.json ... --out results/lr_grid/bsB.json

`train.lr_grid` lists multipliers of the rule's peak rate (`train.lr` x the batch-size
scaling); the first `train.lr_grid_seeds` seeds train at every one of them (for
`train.lr_grid_epochs`, or the whole budget). This stage reads those runs' summaries only
(`metrics.json`: each run's kept validation point, `train.keep_weights`, with its
validation AUROC, loss and cross-entropy; training never reads the test split) and
chooses the multiplier with the best mean over seeds of the kept point's validation
AUROC, ties broken by the lower mean validation loss, then by the multiplier closer to
1; runs that keep the lowest cross-entropy are compared on that cross-entropy instead
(ties by the higher AUROC). A choice at the grid's lowest or highest multiplier is
flagged: a wider grid may do better there.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from seqsetvae.errors import InputError
from seqsetvae.io import read_json, write_json, writer_of

RULES = {
    "auroc": "the best seed-mean validation AUROC (each run's kept point), ties by the lower validation loss",
    "cross_entropy": "the lowest seed-mean validation cross-entropy (each run's kept point), ties by the higher AUROC",
}


def multiplier_tag(multiplier: float) -> str:
    """The multiplier as it appears in run directories (`lr0.5`, `lr1`, `lr2`)."""
    return format(float(multiplier), "g")


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def choose(batch_size: int, grid: list[float], summaries: list[tuple[Path, dict]]) -> dict:
    """The choice object (`lr_grid/bsB.json`, docs/outputs.md) from the grid runs' summaries."""
    found: dict[tuple[str, int], dict] = {}
    for path, summary in summaries:
        multiplier = float(summary.get("lr_multiplier", 1.0))
        if summary.get("batch_size") != batch_size:
            raise InputError(f"{path}: a run of batch size {summary.get('batch_size')}, expected {batch_size}")
        if multiplier_tag(multiplier) not in {multiplier_tag(m) for m in grid}:
            raise InputError(f"{path}: learning-rate multiplier {multiplier:g} is not in the grid {grid}")
        key = (multiplier_tag(multiplier), int(summary["seed"]))
        if key in found:
            raise InputError(f"{path}: a second run of multiplier {key[0]}, seed {key[1]}")
        found[key] = summary
    seeds = sorted({seed for _, seed in found})
    keep = {summary.get("keep_weights", "best_auroc") for summary in found.values()}
    if len(keep) > 1:
        raise InputError(f"the grid of batch size {batch_size} mixes runs that keep different points: {sorted(keep)}")
    by = "cross_entropy" if keep == {"lowest_cross_entropy"} else "auroc"
    candidates = []
    for multiplier in sorted(float(m) for m in grid):
        tag = multiplier_tag(multiplier)
        runs = [found.get((tag, seed)) for seed in seeds]
        if len(grid) > 1 and any(run is None for run in runs):
            missing = [seed for seed, run in zip(seeds, runs) if run is None]
            raise InputError(f"the grid of batch size {batch_size}: no run of multiplier {tag} at seed(s) {missing}")
        runs = [run for run in runs if run is not None]
        aurocs = [_finite((run.get("best") or {}).get("val_auroc")) for run in runs]
        losses = [_finite((run.get("best") or {}).get("val_loss")) for run in runs]
        entropies = [_finite((run.get("best") or {}).get("val_ce")) for run in runs]
        candidates.append(
            {
                "multiplier": multiplier,
                "tag": tag,
                "peak_lr": runs[0]["lr"] if runs else None,
                "seeds": [int(run["seed"]) for run in runs],
                "val_auroc": aurocs,
                # a run without a finite validation AUROC ranks last
                "val_auroc_mean": None if not aurocs or None in aurocs else sum(aurocs) / len(aurocs),
                "val_loss_mean": None if not losses or None in losses else sum(losses) / len(losses),
                "val_ce_mean": None if not entropies or None in entropies else sum(entropies) / len(entropies),
                "epochs": runs[0].get("epochs") if runs else None,
            }
        )

    def rank(candidate: dict) -> tuple:
        auroc, loss, entropy = candidate["val_auroc_mean"], candidate["val_loss_mean"], candidate["val_ce_mean"]
        auroc = -(auroc if auroc is not None else -math.inf)
        closeness = abs(math.log(candidate["multiplier"]))
        if by == "cross_entropy":
            return (entropy if entropy is not None else math.inf, auroc, closeness)
        return (auroc, loss if loss is not None else math.inf, closeness)

    chosen = min(candidates, key=rank)
    edge = None
    if len(candidates) > 1 and chosen is candidates[0]:
        edge = "lowest"
    elif len(candidates) > 1 and chosen is candidates[-1]:
        edge = "highest"
    return {
        "batch_size": batch_size,
        "grid": [c["multiplier"] for c in candidates],
        "seeds": seeds,
        "rule": RULES[by] if len(candidates) > 1 else "one rate: nothing to choose",
        "criterion": by,  # what the choice compared: auroc | cross_entropy
        "candidates": candidates,
        "chosen": {key: chosen[key] for key in ("multiplier", "tag", "peak_lr", "val_auroc_mean", "val_ce_mean")},
        "edge": edge,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae choose-lr", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--grid", type=float, nargs="+", required=True, help="train.lr_grid")
    parser.add_argument("--runs", nargs="*", default=[], help="metrics.json of every grid run of this batch size")
    parser.add_argument("--out", required=True, help="results/lr_grid/bsB.json")
    args = parser.parse_args(argv)
    if len(args.grid) > 1 and not args.runs:
        raise InputError(f"a grid of {len(args.grid)} rates needs the runs' metrics.json (--runs)")
    summaries = [(Path(p), read_json(Path(p), written_by=writer_of(p))) for p in args.runs]
    choice = choose(args.batch_size, args.grid, summaries)
    write_json(Path(args.out), choice)
    picked = choice["chosen"]
    edge = f" (the grid's {choice['edge']} rate)" if choice["edge"] else ""
    print(f"batch size {args.batch_size}: learning-rate multiplier {picked['tag']}{edge} -> {args.out}")
    return 0
