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
import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd

from seqsetvae.errors import InputError
from seqsetvae.io import atomic_path, write_json
from seqsetvae.reports.study import build_study, read_object
from seqsetvae.settings import load_settings

# The original guide's batch-size table (docs/model.md), published without a measurement.
CLAIMED = pd.DataFrame(
    {"batch_size": [1, 4, 8, 16], "relative_speed": [1.0, 2.5, 4.0, 6.0], "memory_gb": [2.5, 6.0, 12.0, None]}
)
FIGURES = {
    "validation_curves": "validation_curves.png",
    "training_loss": "training_loss.png",
    "throughput_memory": "throughput_memory.png",
    "reliability": "reliability.png",
    "lr_grid": "lr_grid.png",
}
MISSING = "–"  # an en dash marks a value the run did not produce (e.g. GPU memory on CPU)


def fmt(value, digits: int = 3) -> str:
    """A number with `digits` decimals, or the missing-value mark."""
    if value is None or (isinstance(value, float) and value != value):
        return MISSING
    return f"{value:.{digits}f}"


def fmt_ci(ci, digits: int = 3) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return MISSING
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def fmt_p(p) -> str:
    return MISSING if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_delta(d: dict | None) -> list[str]:
    if d is None:
        return ["(reference)", MISSING, MISSING]
    return [f"{d['estimate']:+.3f}", fmt_ci(d["ci"]), fmt_p(d["p_adjusted"])]


# -- tables ---------------------------------------------------------------------------


def quality_table(study: dict) -> str:
    header = ["model", "seeds", "test AUROC (mean)", "per seed [95% CI]", "test AUPRC (mean)", "per seed [95% CI]"]
    rows = []
    for e in study["batch_sizes"]:
        cells = [f"batch size {e['batch_size']}", str(len(e["seeds"]))]
        for metric in ("auroc", "auprc"):
            per_seed = "; ".join(f"{fmt(s['estimate'])} {fmt_ci(s['ci'])}" for s in e[f"test_{metric}"]["per_seed"])
            cells += [fmt(e[f"test_{metric}"]["mean"]), per_seed]
        rows.append(cells)
    for b in study["baselines"]:
        rows.append(
            [
                f"baseline: {b['name']}",
                "–",
                fmt(b["test_auroc"]["estimate"]),
                fmt_ci(b["test_auroc"]["ci"]),
                fmt(b["test_auprc"]["estimate"]),
                fmt_ci(b["test_auprc"]["ci"]),
            ]
        )
    return markdown_table(header, rows)


def delta_table(study: dict, against: str) -> str:
    name = "reference" if against == "reference" else "best_baseline"
    header = ["batch size", "Δ AUROC", "95% CI", "Holm p", "Δ AUPRC", "95% CI", "Holm p"]
    rows = [
        [str(e["batch_size"]), *fmt_delta(e[f"delta_auroc_vs_{name}"]), *fmt_delta(e[f"delta_auprc_vs_{name}"])]
        for e in study["batch_sizes"]
    ]
    return markdown_table(header, rows)


def baseline_grid_notes(study: dict) -> list[str]:
    """A line per baseline whose validation choice fell at its grid's end (none: no lines)."""
    lines = []
    for b in study["baselines"]:
        chosen = b.get("chosen_on_valid") or {}
        if chosen.get("at_grid_edge"):
            lines += [
                f"The {b['name'].replace('_', ' ')}'s C ({chosen['C']:g}) is an end of `baseline.lr_c_grid`: "
                "a wider grid may make it stronger.",
                "",
            ]
    return lines


def baselines_delta_table(study: dict) -> str:
    """Δ AUROC of each batch size against each baseline (rows: batch sizes)."""
    header = ["batch size"] + [f"Δ AUROC vs {b['name']} [95% CI], Holm p" for b in study["baselines"]]
    rows = []
    for i, e in enumerate(study["batch_sizes"]):
        cells = []
        for b in study["baselines"]:
            estimate, ci, p = fmt_delta(b["batch_sizes_minus_baseline"][i]["auroc"])
            cells.append(f"{estimate} {ci}, {p}")
        rows.append([str(e["batch_size"]), *cells])
    return markdown_table(header, rows)


def target_table(study: dict) -> str:
    header = [
        "batch size",
        "validation points",
        "samples to target",
        "epochs to target",
        "steps to target",
        "training seconds to target",
        "wall seconds to target",
    ]
    n_train = study["protocol"]["train_patients"] or 0
    rows = []
    for e in study["batch_sizes"]:
        samples = e["samples_to_target"]
        rows.append(
            [
                str(e["batch_size"]),
                str(e["validation_points"]),
                fmt(samples, 0),
                fmt(samples / n_train if samples is not None and n_train else None, 2),
                fmt(e["steps_to_target"], 0),
                fmt(e["seconds_to_target"], 1),
                fmt(e["wall_seconds_to_target"], 1),
            ]
        )
    return markdown_table(header, rows)


def speed_table(study: dict) -> str:
    header = [
        "batch size",
        "peak lr",
        "steps",
        "patients/s (mean)",
        "min – max",
        "relative speed",
        "train peak RSS (MiB)",
        "train peak GPU (MiB)",
        "eval patients/s",
    ]
    rows = [
        [
            str(e["batch_size"]),
            f"{e['peak_lr']:.2g}",
            fmt(e["steps"], 0),
            fmt(e["patients_per_s"]["mean"], 2),
            f"{fmt(e['patients_per_s']['min'], 2)} – {fmt(e['patients_per_s']['max'], 2)}",
            fmt(e["relative_speed"], 2) + "x",
            fmt(e["train_peak_memory_mb"], 0),
            fmt(e["train_peak_gpu_memory_mb"], 0),
            fmt(e["eval_patients_per_s"], 1),
        ]
        for e in study["batch_sizes"]
    ]
    return markdown_table(header, rows)


def calibration_table(study: dict) -> str:
    """ECE, calibration slope and intercept (seed means), each batch size's paired delta
    against the reference with its Holm p; the baselines' values below."""
    names = {"ece": "ECE", "calibration_slope": "slope", "calibration_intercept": "intercept"}
    header = ["model"] + [h for metric, name in names.items() for h in (name, f"Δ {name} [95% CI], Holm p")]
    rows = []
    for e in study["batch_sizes"]:
        cells = [f"batch size {e['batch_size']}"]
        for metric in names:
            part = e["calibration"][metric]
            estimate, ci, p = fmt_delta(part["delta_vs_reference"])
            cells += [fmt(part["mean"]), f"{estimate} {ci}, {p}" if part["delta_vs_reference"] else "(reference)"]
        rows.append(cells)
    for b in study["baselines"]:
        rows.append([f"baseline: {b['name']}"] + [c for metric in names for c in (fmt(b["calibration"][metric]), "")])
    return markdown_table(header, rows)


def grid_by_cross_entropy(grid: dict) -> bool:
    """Whether the grid chose on the kept points' validation cross-entropy (runs with
    train.keep_weights: lowest_cross_entropy) rather than their AUROC."""
    return grid.get("criterion") == "cross_entropy"


def lr_grid_table(study: dict) -> str:
    """Validation AUROC (and, when the grid chose on it, cross-entropy) of every grid point
    at its runs' kept points (seed mean; the peak rate beside it), the chosen one in bold,
    a choice at the grid's edge marked."""
    grid = study["lr_grid"]
    by_cross_entropy = grid_by_cross_entropy(grid)
    header = ["batch size", *[f"x{m:g}" for m in grid["multipliers"]], "chosen"]
    rows = []
    for entry in grid["batch_sizes"]:
        by_multiplier = {c["multiplier"]: c for c in entry["candidates"]}
        cells = [str(entry["batch_size"])]
        for m in grid["multipliers"]:
            c = by_multiplier.get(m)
            text = MISSING
            if c is not None:
                text = fmt(c["val_auroc_mean"])
                if by_cross_entropy:
                    text += f" / {fmt(c.get('val_ce_mean'))}"
                if c["peak_lr"]:
                    text += f" ({c['peak_lr']:.2g})"
            cells.append(f"**{text}**" if m == entry["chosen"] else text)
        edge = f"; the grid's {entry['edge']} rate: a wider grid may do better" if entry["edge"] else ""
        cells.append(f"x{entry['chosen']:g}{edge}")
        rows.append(cells)
    return markdown_table(header, rows)


def vae_table(study: dict) -> str:
    header = ["batch size", "reconstruction / set", "KL / set", "active units", "Brier"]
    rows = []
    for e in study["batch_sizes"]:
        q = e["quality"]
        rows.append(
            [
                str(e["batch_size"]),
                fmt(q["recon"], 3),
                fmt(q["kl"], 2),
                f"{fmt(q['active_units'], 1)} / {q['latent_units']}",
                fmt(q["brier"], 4),
            ]
        )
    return markdown_table(header, rows)


def claim_table(study: dict) -> str:
    measured = {e["batch_size"]: e for e in study["batch_sizes"]}
    gpu = all(e["train_peak_gpu_memory_mb"] is not None for e in study["batch_sizes"])
    header = [
        "batch size",
        "claimed relative speed",
        f"measured (vs batch size {study['reference_batch_size']})",
        "claimed memory (GB)",
        f"measured training peak, {'GPU allocated' if gpu else 'RSS'} (GiB)",
    ]
    rows = []
    for c in CLAIMED.itertuples():
        m = measured.get(c.batch_size)
        memory = None if m is None else (m["train_peak_gpu_memory_mb"] if gpu else m["train_peak_memory_mb"])
        rows.append(
            [
                str(c.batch_size),
                f"{c.relative_speed:.1f}x",
                fmt(m["relative_speed"], 2) + "x" if m else "not run",
                fmt(c.memory_gb, 1) if c.memory_gb == c.memory_gb else "-",
                fmt(memory / 1024, 2) if m else "not run",
            ]
        )
    return markdown_table(header, rows)


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


# -- environment ----------------------------------------------------------------------


def git_commit() -> str:
    """The project's git commit (with a mark for uncommitted changes), or "unknown"."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def settings_digest(settings: dict) -> str:
    """sha256 of the settings JSON in canonical form (sorted keys, no spaces)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dataset(results: Path, unit: str = "patient") -> dict:
    """Rows and per-split patients, sets and events (qc.json), vocabulary size (shards
    index); with the bootstrap unit `subject`, the subjects of each split's samples too."""
    qc = read_object(results / "qc.json")
    index_path = results / "shards" / "index.json"
    index = read_object(index_path) if index_path.exists() else {}
    by_split = qc.get("by_split") or {}
    if not by_split:
        raise InputError(f"{results / 'qc.json'}: no 'by_split' counts")
    if unit == "subject":  # a MEDS task: samples are (subject, prediction time)
        from seqsetvae.data.reader import ShardReader
        from seqsetvae.evaluation.metrics import cluster_of_ids

        by_split = {
            split: {
                **counts,
                "subjects": int(len(set(cluster_of_ids(ShardReader(results / "shards", split).patient_ids)))),
            }
            for split, counts in by_split.items()
        }
    return {
        "rows_in": qc.get("rows_in"),
        "rows_kept": qc.get("rows_kept"),
        "rows_dropped": sum((qc.get("rows_dropped") or {}).values()),
        "vocab_size": index.get("vocab_size"),
        "by_split": by_split,
    }


def machines(runs) -> list[dict]:
    """The distinct machines the runs trained on (host, CPU, GPU, CUDA, driver), each
    with its runs, and whether `train.device: auto` fell back to the CPU there."""
    found: dict[str, dict] = {}
    for run in runs:
        machine = run.train.get("machine") or {}
        key = {k: machine.get(k) for k in ("host", "cpu", "gpu", "gpus_visible", "cuda", "driver")}
        entry = found.setdefault(json.dumps(key, sort_keys=True), {**key, "runs": [], "auto_fell_back_to_cpu": False})
        entry["runs"].append(f"bs{run.batch_size}/seed{run.seed}")
        if run.train.get("device_requested") == "auto" and run.train.get("device") == "cpu":
            entry["auto_fell_back_to_cpu"] = True
    return list(found.values())


def _machine_line(machine: dict) -> str:
    gpu = (
        "no GPU"
        if not machine.get("gpu")
        else (
            f"GPU {machine['gpu']} ({machine.get('gpus_visible')} visible), CUDA {machine.get('cuda')}, driver {machine.get('driver')}"
        )
    )
    fallback = "; train.device auto fell back to the CPU" if machine["auto_fell_back_to_cpu"] else ""
    return (
        f"  - {machine.get('host') or 'unknown host'}: CPU {machine.get('cpu') or 'unknown'}, {gpu}{fallback}: "
        f"{', '.join(machine['runs'])}"
    )


KEPT_POINT = {
    "best_auroc": "the best-validation-AUROC point",
    "lowest_cross_entropy": "the lowest-validation-cross-entropy point",
    "last": "the last validation point",
}


def kept_weights_words(protocol: dict) -> str:
    """Which weights the test split scored (train.keep_weights, train.head_refit)."""
    point = KEPT_POINT[protocol.get("keep_weights", "best_auroc")]
    refit = protocol.get("head_refit", "none") == "regression"
    return point + (", its linear head refitted on the train split (train.head_refit)" if refit else "")


def environment_lines(study: dict) -> list[str]:
    env, data = study["environment"], study["dataset"]
    lines = [
        f"- device: {', '.join(study['device'])}; torch {env['torch']}; CPU threads: {env['threads']}; precision: {env['precision']}",
        "- machines (the runs trained on each):",
        *[_machine_line(m) for m in env.get("machines", [])],
        f"- project commit: {env['commit']}",
        f"- settings digest (sha256 of the settings JSON): `{env['settings_digest']}`",
        f"- evaluation: {kept_weights_words(study['protocol'])} of each run on the test split; bootstrap "
        f"{study['bootstrap']['resamples']} resamples, seed {study['bootstrap']['seed']}, percentile 95% CIs"
        + ("; resampling subjects with all their samples" if study["bootstrap"].get("unit") == "subject" else ""),
        "- dataset (after QC and truncation):",
        f"  - event rows: {data['rows_in']} read, {data['rows_kept']} kept, {data['rows_dropped']} dropped (reasons in qc.json)",
        f"  - variables (train vocabulary): {data['vocab_size']}",
    ]
    for split in ("train", "valid", "test"):
        c = data["by_split"].get(split, {})
        who = (
            f"{c['patients']} samples of {c['subjects']} subjects"
            if "subjects" in c
            else f"{c.get('patients', MISSING)} patients"
        )
        lines.append(f"  - {split}: {who}, {c.get('sets', MISSING)} sets, {c.get('events', MISSING)} events")
    return lines


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
        *environment_lines(study),
        "",
    ]
    return "\n".join(parts)


def _unique(values) -> str:
    found = sorted({str(v) for v in values if v is not None})
    return ", ".join(found) if found else "unknown"


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
    study["dataset"] = dataset(results, study["bootstrap"]["unit"])
    study["environment"] = {
        "commit": git_commit(),
        "settings_digest": settings_digest(given),
        "torch": _unique(r.train.get("torch_version") for r in runs),
        "threads": _unique(r.train.get("threads") for r in runs),
        "precision": _unique(r.train.get("precision") for r in runs),
        "machines": machines(runs),
    }
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
