"""`seqsetvae report`: reports/batch_comparison.json and .md, what batch size buys, measured.

Reads, for every batch size B and seed S, the pipeline's outputs under `--results`
(`runs/bsB/seedS/metrics.json` and `metrics.jsonl`, `eval/bsB/seedS.json` and its
predictions, `memory/bsB/seedS.json`), the baselines (`baselines/{model}.json` and
predictions), `qc.json` and `shards/index.json`. `seqsetvae.reports.study` turns them
into `batch_comparison.json`; the Markdown report and its figures are rendered from that
object alone, so every number in the report is a number of the JSON. The only
hand-written numbers are the original guide's claims, quoted as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path, write_json
from seqsetvae.reports import environment
from seqsetvae.reports.study import build_study
from seqsetvae.reports.tables import (
    CLAIMED,
    baseline_grid_notes,
    baselines_delta_table,
    calibration_table,
    claim_table,
    delta_table,
    fmt,
    fmt_ci,
    fmt_p,
    grid_by_cross_entropy,
    lr_grid_table,
    quality_table,
    speed_table,
    target_table,
    vae_table,
)
from seqsetvae.settings import load_settings

FIGURES = {
    "validation_curves": "validation_curves.png",
    "training_loss": "training_loss.png",
    "throughput_memory": "throughput_memory.png",
    "reliability": "reliability.png",
    "lr_grid": "lr_grid.png",
}


# -- words ----------------------------------------------------------------------------


def _sizes(values: list) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def protocol_sentences(study: dict) -> list[str]:
    p, t = study["protocol"], study["test_split"]
    schedules = p["schedules"]
    warmups = ", ".join(
        f"{name.replace('_', ' ')} {s['epochs']:g} epochs"
        if "epochs" in s
        else f"{name.replace('_', ' ')} {s['steps']} steps"
        for name, s in schedules.items()
        if name != "lr"
    )
    rule = (
        f"{p['lr']:g} x (B / {p['lr_reference_batch_size']})^{ {'sqrt': '0.5', 'linear': '1', 'none': '0'}[p['lr_scaling']] } "
        f"({p['lr_scaling']} scaling)"
    )
    grid = study.get("lr_grid")
    if grid and len(grid["multipliers"]) > 1:
        chosen = ", ".join(f"x{e['chosen']:g} at batch size {e['batch_size']}" for e in grid["batch_sizes"])
        rate = (
            f"at the peak learning rate chosen for it from a grid of {', '.join(f'x{m:g}' for m in grid['multipliers'])} "
            f"the rule's {rule}: each rate trained at seed(s) {', '.join(map(str, grid['seeds']))} for "
            f"{grid['epochs']} epoch(s), the rate with {grid['rule']} chosen, and only the chosen rate's runs scored "
            f"on the test split ({chosen})"
        )
    else:
        rate = f"at a peak learning rate of {rule}"
    return [
        f"Every batch size trained on the same budget of {p['epochs']} epochs ({p['samples']} samples of "
        f"{p['train_patients']} train patients) with {len(p['seeds'])} seed(s) each, {rate}, with every schedule in "
        f"epochs ({warmups}; learning rate: {schedules['lr']['schedule']}, warm-up "
        f"{schedules['lr']['warmup_epochs']:g} epochs).",
        f"All runs and baselines are scored on the same {t['patients']} test patients ({t['positives']} positive), "
        f"and differences are paired bootstrap differences with Holm-adjusted p-values.",
    ]


def summary_sentences(study: dict) -> list[str]:
    """Plain-language findings, generated from the study's numbers and nothing else."""
    sentences, alpha = [], study["significance_level"]
    ref = study["reference_batch_size"]
    entries = study["batch_sizes"]
    t = study["test_split"]
    for metric, label in (("auroc", "AUROC"), ("auprc", "AUPRC")):
        claims, same = [], []
        for e in entries:
            d = e[f"delta_{metric}_vs_reference"]
            if d is None:
                continue
            if d["p_adjusted"] is not None and d["p_adjusted"] < alpha:
                direction = "higher" if d["estimate"] > 0 else "lower"
                claims.append(
                    f"Batch size {e['batch_size']}'s mean test {label} is {direction} than batch size {ref}'s by "
                    f"{abs(d['estimate']):.3f} (paired 95% CI {fmt_ci(d['ci'])}, Holm-adjusted p {fmt_p(d['p_adjusted'])})."
                )
            else:
                same.append(e["batch_size"])
        sentences += claims
        if same:
            sentences.append(
                f"In test {label}, batch size(s) {_sizes(same)} are indistinguishable from batch size {ref} at this sample size "
                f"({t['patients']} test patients, {t['positives']} positive; Holm-adjusted p >= {alpha} for each)."
            )
    best = study["best_baseline"]
    if best is not None:
        baseline = next(b for b in study["baselines"] if b["name"] == best)
        worse = [e for e in entries if e["test_auroc"]["mean"] < baseline["test_auroc"]["estimate"]]
        significant = [e["batch_size"] for e in worse if e["delta_auroc_vs_best_baseline"]["p_adjusted"] < alpha]
        if worse:
            sentences.append(
                f"The VAE is worse than the {best.replace('_', ' ')} baseline (chosen on validation; test AUROC "
                f"{baseline['test_auroc']['estimate']:.3f}) at batch size(s) {_sizes([e['batch_size'] for e in worse])}"
                + (
                    f", significantly so at {_sizes(significant)} (Holm-adjusted p < {alpha})."
                    if significant
                    else ", though not significantly (Holm-adjusted p >= 0.05)."
                )
            )
        else:
            better = [e["batch_size"] for e in entries if e["delta_auroc_vs_best_baseline"]["p_adjusted"] < alpha]
            sentences.append(
                f"Every batch size's mean test AUROC is at least that of the best baseline ({best.replace('_', ' ')}, "
                f"{baseline['test_auroc']['estimate']:.3f})"
                + (
                    f"; significantly higher at {_sizes(better)}."
                    if better
                    else ", though not significantly higher at any."
                )
            )
    fastest = max(entries, key=lambda e: e["patients_per_s"]["mean"])
    sentences.append(
        f"Fastest training: batch size {fastest['batch_size']} at {fastest['patients_per_s']['mean']:.2f} patients/s "
        f"(mean over seeds), {fastest['relative_speed']:.2f}x batch size {ref}."
    )
    target = study["target"]
    if target["value"] is not None:
        reached = [e for e in entries if e["samples_to_target"] is not None]
        never = [e["batch_size"] for e in entries if e["samples_to_target"] is None]
        if reached:
            quickest = min(reached, key=lambda e: e["seconds_to_target"])
            sentences.append(
                f"Target validation AUROC {target['value']:.3f} ({target['share_of_best_mean']:.0%} of the best mean curve): "
                f"batch size {quickest['batch_size']} reaches it first in training time ({quickest['seconds_to_target']:.0f} s, "
                f"{quickest['samples_to_target']:.0f} samples)"
                + (f"; batch size(s) {_sizes(never)} never reach it." if never else ".")
            )
    noise = study["gradient_noise_scale"]
    if noise["b_simple"] is not None:
        b = noise["b_simple"]
        tested = [e["batch_size"] for e in entries]
        below = [s for s in tested if s < b]
        sentences.append(
            f"Gradient noise scale B_simple is about {b:.0f} patients ({noise['measurements']} measurements): it estimates the "
            f"critical batch size, so batch sizes well below it ({_sizes(below) if below else 'none tested'}) should get "
            f"nearly proportionally more progress per step from a larger batch, and batch sizes far above it would mostly waste samples."
        )
    elif noise["measurements"]:
        sentences.append(
            f"The gradient noise scale could not be estimated: {noise['measurements']} measurements gave no positive |G|^2."
        )
    return sentences


# -- the report -----------------------------------------------------------------------


def lr_grid_section(study: dict, figures_rel: str) -> list[str]:
    grid = study.get("lr_grid")
    if not grid or len(grid["multipliers"]) < 2:
        return []
    seeds = ", ".join(map(str, grid["seeds"]))
    return [
        "## Learning-rate grid",
        "",
        f"Validation AUROC{' / cross-entropy' if grid_by_cross_entropy(grid) else ''} of each rate at its runs' kept "
        f"points (mean over seed(s) {seeds}, {grid['epochs']} epoch(s) of training; the peak learning rate in brackets); "
        f"chosen: {grid['rule']}. Chosen on the validation split only; the test split was not used for any choice.",
        "",
        lr_grid_table(study),
        "",
        f"![Validation AUROC against the peak learning rate]({figures_rel}/{FIGURES['lr_grid']})",
        "",
    ]


def render(study: dict, figures_rel: str) -> str:
    ref = study["reference_batch_size"]
    best = study["best_baseline"]
    parts = [
        "# Batch size comparison",
        "",
        " ".join(protocol_sentences(study)),
        "",
        "**How to read this.** Held equal across batch sizes: the data, the samples seen (epochs), the phases of every "
        "schedule, the validation points (in samples), the test patients and the evaluation. What changes is the batch "
        "size and its peak learning rate (the scaling rule's, times the multiplier chosen on validation data when "
        "`train.lr_grid` holds several). A difference is claimed only where its Holm-adjusted "
        f"paired p-value is below {study['significance_level']}; otherwise the batch sizes are reported as "
        "indistinguishable at this test-set size. Generated by `seqsetvae report` from `batch_comparison.json` "
        "(every number below is in it); docs/report.md defines each column.",
        "",
        "## Summary",
        "",
        *[f"- {s}" for s in summary_sentences(study)],
        "",
        *lr_grid_section(study, figures_rel),
        "## Test-set quality",
        "",
        "Seed mean and per-seed values (each with its bootstrap 95% CI over test patients); the baselines are "
        "fitted on the same shards and splits: scikit-learn models on per-patient summaries, `gru` on time bins.",
        "",
        quality_table(study),
        "",
        *baseline_grid_notes(study),
        f"### Paired differences against batch size {ref}",
        "",
        "Seed-mean metric of the batch size minus that of the reference, paired bootstrap over the same test patients "
        "(seeds resampled within each batch size); Holm adjustment over the batch sizes.",
        "",
        delta_table(study, "reference"),
        "",
    ]
    if best is not None:
        parts += [
            f"### Paired differences against the best baseline ({best}, chosen on the validation split)",
            "",
            delta_table(study, "best_baseline"),
            "",
            "### Paired AUROC differences against every baseline",
            "",
            "Seed-mean AUROC of the batch size minus the baseline's, paired bootstrap; Holm adjustment over the batch "
            "sizes within each baseline.",
            "",
            baselines_delta_table(study),
            "",
        ]
    target = study["target"]
    parts += [
        "## Time to target",
        "",
        f"Target: validation AUROC {fmt(target['value'])} ({target['share_of_best_mean']:.0%} of the best seed-mean validation "
        f"AUROC of any batch size, {fmt(target['best_mean'])}); the first validation point where the seed-mean curve reaches "
        "it (– : never). Training seconds count optimiser steps only; wall seconds include validation.",
        "",
        target_table(study),
        "",
        "## Speed and memory",
        "",
        f"Relative speed: mean training patients/s over that of batch size {ref}. Peak memory is the largest over seeds and "
        "includes the process's fixed cost (Python, torch, the model).",
        "",
        speed_table(study),
        "",
        "## Calibration",
        "",
        "Whether the predicted risks mean what they say, on the same test patients: expected calibration error (ten "
        "equal-width bins of risk; 0 is ideal), and the logistic recalibration `logit P(y) = a + b logit(p)`: its slope "
        "b (1 is ideal; below 1, risks too extreme) and intercept a with b fixed at 1 (0 is ideal; below 0, risks too "
        "high). Class weights and label smoothing move these while leaving AUROC alone. Seed means; paired deltas "
        f"against batch size {ref} with Holm-adjusted p.",
        "",
        calibration_table(study),
        "",
        f"![Reliability: observed against predicted risk by decile]({figures_rel}/{FIGURES['reliability']})",
        "",
        "## The VAE's own terms",
        "",
        "Means over seeds of the test split's reconstruction and KL per set (the posterior's KL before free bits and beta), "
        "active latent units (variance of the posterior means across test sets above 0.01) and the Brier score.",
        "",
        vae_table(study),
        "",
        "## The original guide's claim",
        "",
        "The original guide published this table without a measurement (memory presumably on a GPU):",
        "",
        claim_table(study),
        "",
        "## Figures",
        "",
        f"![Validation AUROC against samples seen and training time]({figures_rel}/{FIGURES['validation_curves']})",
        "",
        f"![Training loss]({figures_rel}/{FIGURES['training_loss']})",
        "",
        f"![Throughput and memory against batch size]({figures_rel}/{FIGURES['throughput_memory']})",
        "",
        "## Environment",
        "",
        *environment.environment_lines(study),
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    from seqsetvae.reports import figures
    from seqsetvae.reports.study import load_baselines, load_lr_grid, load_runs

    parser = argparse.ArgumentParser(prog="seqsetvae report", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="{}", help="config sections (JSON); hashed into the report")
    parser.add_argument("--results", required=True, help="the pipeline's results folder")
    parser.add_argument("--runs", nargs="+", required=True, help="the compared runs, bsB/lrM/seedS (results/runs/...)")
    parser.add_argument(
        "--lr-grid", nargs="*", default=[], help="each batch size's learning-rate choice (results/lr_grid/bsB.json)"
    )
    parser.add_argument("--baselines", nargs="*", default=[], help="baseline model names (results/baselines/NAME.json)")
    parser.add_argument("--out", required=True, help="the Markdown report; the JSON and figures/ go beside it")
    args = parser.parse_args(argv)

    try:
        given = json.loads(args.settings)
    except ValueError as error:
        raise InputError(f"--settings: not valid JSON ({error})") from None
    results, out = Path(args.results), Path(args.out)
    runs = load_runs(results, args.runs)
    lr_grid = load_lr_grid([Path(p) for p in args.lr_grid], runs) if args.lr_grid else None
    missing = [name for name in ("model", "train") if name not in given]
    if missing:  # the protocol sentence states the runs' budget and schedules from these
        raise InputError(f"--settings: no {' or '.join(missing)} section (the report rule passes the runs' config)")
    settings = load_settings(given)  # validated; keys a section leaves out at their defaults
    study = build_study(runs, load_baselines(results, args.baselines), settings, lr_grid)
    study["dataset"] = environment.dataset(results, study["bootstrap"]["unit"])
    study["environment"] = environment.describe(runs, given)
    study["summary"] = summary_sentences(study)
    write_json(out.with_suffix(".json"), study)
    figures_dir = out.parent / "figures"
    figures.validation_curves(study, figures_dir / FIGURES["validation_curves"])
    figures.training_loss(
        {(r.batch_size, r.seed): r.steps for r in runs},
        runs[0].train.get("train_patients"),
        figures_dir / FIGURES["training_loss"],
    )
    figures.throughput_memory(study, CLAIMED, figures_dir / FIGURES["throughput_memory"])
    figures.reliability(study, figures_dir / FIGURES["reliability"])
    figures.lr_grid(study, figures_dir / FIGURES["lr_grid"])
    with atomic_path(out) as tmp:
        tmp.write_text(render(study, "figures"))
    print(f"report for {len(runs)} runs ({', '.join(args.runs)}) -> {out} and {out.with_suffix('.json')}")
    return 0
