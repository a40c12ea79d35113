"""The report's tables: Markdown rendered from `batch_comparison.json`'s numbers alone."""

from __future__ import annotations

import pandas as pd

# The original guide's batch-size table (docs/model.md), published without a measurement.
CLAIMED = pd.DataFrame(
    {"batch_size": [1, 4, 8, 16], "relative_speed": [1.0, 2.5, 4.0, 6.0], "memory_gb": [2.5, 6.0, 12.0, None]}
)

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
