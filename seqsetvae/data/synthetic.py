"""`seqsetvae synthetic`: ICU-like raw event and label CSVs in the user's format.

Each patient has a latent severity; it sets the in-hospital mortality risk and shifts
the trajectories of a handful of variables (lactate, MAP, HR, GCS, creatinine, ...),
progressively over the stay, so a model can learn the label from the values. Vitals
are charted often, in sets of several variables at one timestamp; labs rarely, in
panels. Every patient's events are generated at once with numpy (repeat / cumsum over
flat arrays), so millions of events take seconds. The files are then read by the same
`ingest` as real data: there is no second code path.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from seqsetvae.io import atomic_path
from seqsetvae.settings import load_settings

FIRST_PATIENT_ID = 200001
# severity effect: how many standard deviations one unit of latent severity moves the
# variable at the end of the stay (half of it from admission on)
# name: (mean, std, lower bound, upper bound, decimals, severity effect)
VITALS = {
    "HR": (85, 15, 30, 220, 0, 0.6),
    "SBP": (120, 18, 50, 250, 0, -0.5),
    "DBP": (65, 11, 20, 150, 0, -0.3),
    "MAP": (82, 12, 30, 180, 0, -0.7),
    "RespRate": (18, 4, 4, 60, 0, 0.6),
    "SpO2": (96, 2.5, 60, 100, 0, -0.5),
    "Temp": (37.0, 0.6, 33, 42, 1, 0.2),
    "GCS": (13, 2.5, 3, 15, 0, -0.8),
    "CVP": (9, 4, -5, 30, 0, 0.2),
    "UrineOutput": (80, 45, 0, 600, 0, -0.4),
    "FiO2": (0.4, 0.12, 0.21, 1.0, 2, 0.5),
    "PEEP": (6, 2.5, 0, 24, 0, 0.3),
    "TidalVolume": (480, 70, 150, 900, 0, 0.0),
    "Weight": (80, 18, 35, 200, 1, 0.0),
}
LABS = {
    "Lactate": (1.8, 1.0, 0.3, 20, 1, 1.0),
    "Creatinine": (1.2, 0.6, 0.2, 15, 2, 0.7),
    "BUN": (22, 10, 2, 150, 0, 0.6),
    "Glucose": (135, 35, 30, 600, 0, 0.2),
    "Potassium": (4.1, 0.5, 2.0, 8.0, 1, 0.2),
    "Sodium": (139, 4, 115, 170, 0, 0.0),
    "Chloride": (104, 5, 80, 130, 0, 0.0),
    "Bicarbonate": (24, 4, 5, 45, 0, -0.6),
    "AnionGap": (13, 3.5, 3, 40, 0, 0.5),
    "WBC": (11, 4.5, 0.2, 80, 1, 0.4),
    "Hemoglobin": (10.5, 1.8, 4, 18, 1, -0.3),
    "Hematocrit": (31, 5, 12, 55, 1, -0.2),
    "Platelets": (210, 90, 5, 900, 0, -0.5),
    "pH": (7.38, 0.06, 6.8, 7.7, 2, -0.6),
    "PaO2": (105, 35, 35, 500, 0, -0.3),
    "PaCO2": (41, 7, 15, 110, 0, 0.1),
    "Bilirubin": (1.1, 1.0, 0.1, 40, 1, 0.5),
    "ALT": (45, 35, 3, 3000, 0, 0.2),
    "AST": (50, 40, 3, 4000, 0, 0.3),
    "Albumin": (3.1, 0.6, 1.0, 5.5, 1, -0.4),
    "INR": (1.3, 0.4, 0.8, 10, 1, 0.4),
    "PTT": (34, 9, 18, 150, 1, 0.2),
    "Magnesium": (2.0, 0.3, 0.8, 4.5, 1, 0.0),
    "Calcium": (8.5, 0.7, 5, 13, 1, -0.1),
    "Phosphate": (3.5, 1.0, 0.8, 12, 1, 0.3),
    "Troponin": (0.3, 0.5, 0.0, 50, 2, 0.4),
    "CRP": (60, 50, 0.1, 500, 0, 0.3),
    "BaseExcess": (0, 4, -25, 20, 0, -0.5),
}
# events per set beyond the first, on average: lab panels are bigger than vital sets
LAB_SET_SHARE = 0.15
LAB_PANEL_FACTOR = 3.0
MEAN_GAP_MINUTES = 40.0  # between charting times: a 110-set stay lasts about 3 days


def variable_table(n_variables: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, parameter matrix [V, 6], is_vital [V]) of the first `n_variables`.

    About a third are vitals; names beyond the built-in lists are `Lab041`, ...
    """
    n_vitals = min(len(VITALS), max(1, round(n_variables * 0.3)))
    n_labs = n_variables - n_vitals
    vitals = list(VITALS.items())[:n_vitals]
    labs = list(LABS.items())[:n_labs]
    labs += [(f"Lab{i + 1:03d}", (50.0, 10.0, 0.0, 200.0, 1, 0.0)) for i in range(len(labs) + n_vitals, n_variables)]
    names = [name for name, _ in vitals + labs]
    params = np.array([p for _, p in vitals + labs], dtype=np.float64)
    return names, params, np.arange(n_variables) < n_vitals


def _segment_positions(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for each count c, concatenated (position inside its group)."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - starts


def generate(synthetic: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """All patients' events and labels as flat numpy arrays.

    Returns (events {patient, minute, variable, value}, labels {patient, label},
    variable names); `patient` is the 0-based patient index, `variable` an index into
    the names.
    """
    rng = np.random.default_rng(synthetic["seed"])
    n_patients = int(synthetic["patients"])
    names, params, is_vital = variable_table(int(synthetic["variables"]))
    mean, std, low, high, decimals, effect = params.T
    vital_ids, lab_ids = np.flatnonzero(is_vital), np.flatnonzero(~is_vital)

    # patients: severity -> label (about 20% positive)
    severity = rng.standard_normal(n_patients)
    risk = 1.0 / (1.0 + np.exp(-(-3.0 + 3.0 * severity)))
    label = (rng.random(n_patients) < risk).astype(np.int64)

    # sets per patient: long-tailed stay lengths around mean_sets
    sigma = 0.7
    n_sets = np.maximum(2, np.round(synthetic["mean_sets"] * rng.lognormal(-(sigma**2) / 2, sigma, n_patients)))
    n_sets = n_sets.astype(np.int64)
    set_patient = np.repeat(np.arange(n_patients), n_sets)
    n_total_sets = len(set_patient)

    # set times: integer minutes, irregular gaps of at least one minute
    gaps = np.ceil(rng.exponential(MEAN_GAP_MINUTES, n_total_sets)).astype(np.int64)
    first = np.cumsum(n_sets) - n_sets
    gaps[first] = rng.integers(0, 60, n_patients)  # first charting within the first hour
    cumulative = np.cumsum(gaps)
    set_minute = cumulative - np.repeat(cumulative[first] - gaps[first], n_sets)
    stay_minutes = set_minute[np.cumsum(n_sets) - 1] + 1

    # set kinds and sizes: vitals charted together, labs as panels
    lab_set = (rng.random(n_total_sets) < LAB_SET_SHARE) if len(lab_ids) else np.zeros(n_total_sets, bool)
    if not len(vital_ids):
        lab_set[:] = True
    per_set = max(synthetic["mean_events"] / synthetic["mean_sets"] - 1.0, 0.0)
    extra_vital = per_set / (1 - LAB_SET_SHARE + LAB_SET_SHARE * LAB_PANEL_FACTOR)
    lam = np.where(lab_set, extra_vital * LAB_PANEL_FACTOR, extra_vital)
    pool_size = np.where(lab_set, len(lab_ids), len(vital_ids))
    set_size = np.minimum(1 + rng.poisson(lam), pool_size)

    # events: k distinct variables of the set's pool, walking it from a random start
    # with a random stride coprime to the pool size
    event_set = np.repeat(np.arange(n_total_sets), set_size)
    position = _segment_positions(set_size)
    start = rng.integers(0, 1 << 30, n_total_sets) % pool_size
    stride = _coprime_strides(rng, pool_size)
    slot = (start[event_set] + position * stride[event_set]) % pool_size[event_set]
    is_lab = lab_set[event_set]
    variable = np.where(
        is_lab,
        lab_ids[np.minimum(slot, len(lab_ids) - 1)] if len(lab_ids) else 0,
        vital_ids[np.minimum(slot, len(vital_ids) - 1)] if len(vital_ids) else 0,
    )
    patient = set_patient[event_set]
    minute = set_minute[event_set]

    # values: variable baseline + patient offset + severity shift growing over the stay
    offset = rng.standard_normal((n_patients, len(names))) * 0.5
    progress = minute / stay_minutes[patient]
    shift = effect[variable] * severity[patient] * (0.5 + 0.5 * progress)
    noise = rng.standard_normal(len(variable)) * 0.6
    value = mean[variable] + std[variable] * (offset[patient, variable] + shift + noise)
    value = np.clip(value, low[variable], high[variable])
    scale = 10.0 ** decimals[variable]
    value = np.round(value * scale) / scale

    events = {"patient": patient, "minute": minute, "variable": variable, "value": value}
    labels = {"patient": np.arange(n_patients), "label": label}
    return events, labels, names


def _coprime_strides(rng: np.random.Generator, pool_size: np.ndarray) -> np.ndarray:
    """A stride per set, coprime to its pool size (so k steps visit k distinct slots)."""
    stride = np.ones(len(pool_size), dtype=np.int64)
    for size in np.unique(pool_size):  # two pool sizes: vitals and labs
        candidates = np.array([s for s in range(1, max(int(size), 2)) if np.gcd(s, int(size)) == 1])
        mask = pool_size == size
        stride[mask] = candidates[rng.integers(0, len(candidates), int(mask.sum()))]
    return stride


def write_csvs(settings: dict, events_path: str, labels_path: str) -> dict:
    """Generate and write the two CSVs in the user format of `settings["data"]`."""
    columns, time_unit = settings["data"]["columns"], settings["data"]["time_unit"]
    events, labels, names = generate(settings["synthetic"])
    patient_ids = pa.array((FIRST_PATIENT_ID + np.arange(len(labels["patient"]))).astype(str))
    minute = events["minute"]
    time = pa.array(minute) if time_unit == "minutes" else pa.array(minute / 60.0)
    event_table = pa.table(
        {
            columns["patient_id"]: patient_ids.take(pa.array(events["patient"])),
            columns["time"]: time,
            columns["variable"]: pa.array(names).take(pa.array(events["variable"])),
            columns["value"]: pa.array(events["value"]),
        }
    )
    label_table = pa.table({columns["patient_id"]: patient_ids, columns["label"]: pa.array(labels["label"])})
    options = pacsv.WriteOptions(quoting_style="none")
    with atomic_path(events_path) as events_tmp, atomic_path(labels_path) as labels_tmp:
        pacsv.write_csv(event_table, events_tmp, write_options=options)
        pacsv.write_csv(label_table, labels_tmp, write_options=options)
    n_patients = len(labels["label"])
    return {
        "patients": n_patients,
        "events": int(len(minute)),
        "positive_rate": float(labels["label"].mean()) if n_patients else 0.0,
        "variables": len(names),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqsetvae synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="raw events CSV to write")
    parser.add_argument("--labels", required=True, help="labels CSV to write")
    parser.add_argument("--settings", default="{}", help="JSON config sections (synthetic, data)")
    args = parser.parse_args(argv)
    settings = load_settings(args.settings)
    summary = write_csvs(settings, args.events, args.labels)
    print(
        f"synthetic: {summary['patients']} patients, {summary['events']} events, "
        f"{summary['variables']} variables, {summary['positive_rate']:.1%} positive"
    )
    return 0
