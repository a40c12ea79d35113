"""`seqsetvae baseline`: simple models on per-patient summaries (and time bins) of the same shards.

    seqsetvae baseline --settings JSON --shards DIR --vocab F --out-dir results/baselines [--threads N]

What the VAE must beat to be worth its cost. Every patient of a split becomes one row of
summary features computed from the shards the VAE trains on (the same normalised
values, truncation and splits), vectorised over all events of the split at once:

- per variable `v` of the train vocabulary: `mean:v` and `last:v` (the z-normalised
  value's mean and its value at the latest time; missing when never measured),
  `log_count:v` (log1p of the number of measurements) and `observed:v` (0/1);
- `log_sets` (log1p of the number of sets), `log_events`, and `log_hours`
  (log1p of the hours between the first and the last set).

Each model of `baseline.models` is fitted on the train split, its one hyper-parameter
(if any; the GRU's epoch) chosen on the validation split by AUROC, and scored on the
test split with the same metrics, bootstrap and predictions format as a VAE run
(`seqsetvae evaluate`): `{name}.json` and `{name}_predictions.parquet` in `--out-dir`.

- `logistic_regression`: missing values imputed by 0 (the train mean, in z units) beside
  the observed flags, standardised, L2-regularised, C chosen from `baseline.lr_c_grid`.
- `gradient_boosting`: scikit-learn's `HistGradientBoostingClassifier` (missing values
  handled natively), default settings, seeded.
- `gru`: not on the summaries but on time bins of the same shards (`baseline.gru`), a
  one-layer GRU, epoch chosen on the validation split (seqsetvae.evaluation.sequence_baseline).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from seqsetvae.data import SPLITS
from seqsetvae.data.ragged import RaggedPatients
from seqsetvae.data.reader import ShardReader
from seqsetvae.errors import InputError
from seqsetvae.evaluation.metrics import bootstrap_unit, classification_metrics, clusters_of
from seqsetvae.io import write_json
from seqsetvae.settings import load_settings

MODELS = ("logistic_regression", "gradient_boosting", "gru")


def feature_names(vocabulary: list[str]) -> list[str]:
    per_variable = [f"{kind}:{name}" for kind in ("mean", "last", "log_count", "observed") for name in vocabulary]
    return per_variable + ["log_sets", "log_events", "log_hours"]


def patient_features(patients: RaggedPatients, vocab_size: int) -> np.ndarray:
    """float64 [P, 4 V + 3]: the summary features of every patient (NaN: never measured).

    Columns in the order of `feature_names`. Events are grouped by (patient, variable)
    with one stable sort; sums, counts and last values are read off the groups.
    """
    P, V = patients.n_patients, vocab_size
    events_per_patient = patients.events_per_patient()
    event_patient = np.repeat(np.arange(P, dtype=np.int64), events_per_patient)
    key = event_patient * V + patients.variable_ids.astype(np.int64)  # [E]
    values = patients.values.astype(np.float64)
    count = np.bincount(key, minlength=P * V).astype(np.float64)
    total = np.bincount(key, weights=values, minlength=P * V)
    # events are in time order within a patient, so a stable sort by key keeps each
    # group's events in time order and its last row is the latest measurement
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    group_last = np.flatnonzero(np.r_[sorted_key[1:] != sorted_key[:-1], True]) if len(key) else np.zeros(0, np.int64)
    last = np.full(P * V, np.nan)
    last[sorted_key[group_last]] = values[order[group_last]]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)

    sets = patients.sets_per_patient()
    first_set, last_set = patients.patient_offsets[:-1], patients.patient_offsets[1:] - 1
    times = patients.set_times.astype(np.float64)
    hours = (times[last_set] - times[first_set]) / 60.0  # every patient of a shard holds a set
    blocks = [
        mean.reshape(P, V),
        last.reshape(P, V),
        np.log1p(count).reshape(P, V),
        (count > 0).astype(np.float64).reshape(P, V),
        np.log1p(sets.astype(np.float64))[:, None],
        np.log1p(events_per_patient.astype(np.float64))[:, None],
        np.log1p(np.maximum(hours, 0.0))[:, None],
    ]
    return np.concatenate(blocks, axis=1)


def read_split(shards: Path, split: str) -> tuple[RaggedPatients, int]:
    """(every patient of the split in the reader's order, vocabulary size)."""
    reader = ShardReader(shards, split)
    return reader.take(np.arange(len(reader))), reader.vocab_size


def split_features(shards: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features [P, F], labels [P], patient ids) of one split, in the reader's order."""
    return summaries(*read_split(shards, split))


def summaries(patients: RaggedPatients, vocab_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    return patient_features(patients, vocab_size), patients.labels.astype(np.int64), patients.patient_ids


def make_model(name: str, settings: dict, seed: int, c: float | None = None):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic_regression":
        return make_pipeline(
            SimpleImputer(strategy="constant", fill_value=0.0, keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=c, max_iter=settings["lr_max_iter"]),
        )
    if name == "gradient_boosting":
        return HistGradientBoostingClassifier(random_state=seed)
    raise InputError(f"configuration key baseline.models: unknown model {name!r} (known: {', '.join(MODELS)})")


def fit_baseline(name: str, data: dict, settings: dict, seed: int) -> tuple[object, dict]:
    """The model fitted on train (C chosen on valid for the regression) and its choice."""
    from sklearn.metrics import roc_auc_score

    x_train, y_train = data["train"][:2]
    x_valid, y_valid = data["valid"][:2]
    grid = settings["lr_c_grid"] if name == "logistic_regression" else [None]
    two_classes = len(np.unique(y_valid)) == 2
    best, chosen = None, {}
    for c in grid:
        model = make_model(name, settings, seed, c).fit(x_train, y_train)
        auroc = float(roc_auc_score(y_valid, model.predict_proba(x_valid)[:, 1])) if two_classes else None
        if best is None or (auroc is not None and auroc > chosen["val_auroc"]):
            best, chosen = model, {"val_auroc": auroc, **({"C": c} if c is not None else {})}
    if "C" in chosen and len(grid) > 1:
        # a choice at the grid's end says the best C may lie beyond it (stop 23: 0.01, the
        # old grid's smallest, won on both PhysioNet cohorts)
        chosen["at_grid_edge"] = chosen["C"] in (min(grid), max(grid))
    return best, chosen


def main(argv: list[str]) -> int:
    from seqsetvae.evaluation.evaluate import write_predictions

    parser = argparse.ArgumentParser(prog="seqsetvae baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="{}", help="JSON with the baseline and evaluate sections")
    parser.add_argument("--shards", required=True, help="shards directory (results/shards)")
    parser.add_argument("--vocab", required=True, help="stats/vocabulary.json (feature names)")
    parser.add_argument("--out-dir", required=True, help="folder of {model}.json and {model}_predictions.parquet")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the gru (default: torch's)")
    parser.add_argument(
        "--bootstrap-unit",
        choices=("patient", "subject"),
        default=None,
        help="what the bootstrap resamples (default: evaluate.bootstrap_unit, auto resolved with data.format)",
    )
    args = parser.parse_args(argv)
    settings = load_settings(args.settings)
    baseline, evaluate = settings["baseline"], settings["evaluate"]
    shards, out = Path(args.shards), Path(args.out_dir)

    from seqsetvae.io import read_json

    vocabulary = read_json(args.vocab, written_by="stats")["variables"]
    read = {split: read_split(shards, split) for split in SPLITS}
    data = {split: summaries(*read[split]) for split in SPLITS}
    for split, (x, y, _) in data.items():
        if len(y) == 0:
            raise InputError(
                f"{shards}/{split}: the {split} split has no patients; the baselines need all three splits"
            )
        if split == "train" and len(np.unique(y)) < 2:
            raise InputError(f"{shards}/train: every train patient has label {y[0]}; a classifier needs both classes")
    names = feature_names(vocabulary)
    if len(names) != data["train"][0].shape[1]:
        raise InputError(
            f"{args.vocab}: {len(vocabulary)} variables, but the shards have {data['train'][0].shape[1] // 4}"
        )

    x_test, y_test, test_ids = data["test"]
    clusters = clusters_of(test_ids, args.bootstrap_unit or bootstrap_unit(evaluate, settings["data"]["format"]))
    for name in baseline["models"]:
        start = time.perf_counter()
        if name == "gru":
            from seqsetvae.evaluation.sequence_baseline import gru_baseline

            probabilities, chosen, features = gru_baseline(read, baseline["gru"], evaluate["seed"], args.threads)
        else:
            model, chosen = fit_baseline(name, data, baseline, evaluate["seed"])
            probabilities = model.predict_proba(x_test)[:, 1].astype(np.float64)
            features = {
                "n": len(names),
                "per_variable": ["mean", "last", "log_count", "observed"],
                "per_patient": names[-3:],
            }
        metrics = classification_metrics(
            y_test, probabilities, evaluate["bootstrap_resamples"], evaluate["seed"], clusters
        )
        predictions = out / f"{name}_predictions.parquet"
        write_predictions(predictions, list(test_ids), y_test, probabilities)
        write_json(
            out / f"{name}.json",
            {
                "name": name,
                "split": "test",
                "features": features,
                "train_patients": int(len(data["train"][1])),
                "chosen_on_valid": chosen,
                **metrics,
                "fit_seconds": time.perf_counter() - start,
                "predictions": str(predictions),
            },
        )
        print(
            f"baseline {name}: test AUROC {metrics['auroc']} {metrics['auroc_ci']}, AUPRC {metrics['auprc']} ({chosen})"
        )
    return 0
