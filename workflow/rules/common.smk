import glob
import json
import os
import shlex

RESULTS = config["results"]
REPORTS = config["reports"]
BATCH_SIZES = config["train"]["batch_sizes"]
SYNTHETIC = config["data"]["source"] == "synthetic"
# the layout of data.events (docs/input_formats.md); synthetic data is written as csv
FORMAT = config["data"]["format"]
if SYNTHETIC and FORMAT != "csv":
    raise ValueError(
        f"data.format is {FORMAT!r} but data.source is 'synthetic' (written as csv):"
        " set data.source: files and data.events to read your dataset"
    )

RAW_EVENTS = f"{RESULTS}/raw/events.csv"
RAW_LABELS = f"{RESULTS}/raw/labels.csv"
SPLITS_CSV = f"{RESULTS}/splits.csv"  # the split of every patient (rule splits)
# a non-CSV dataset's labels and the splits it carries (rule format_labels)
FORMAT_LABELS = f"{RESULTS}/labels/labels.csv"
TASK = config["data"].get("task")  # an ACES task configuration (format meds)
TASK_LABELS = f"{RESULTS}/task"  # its labels, one Parquet file per MEDS data file
FORMAT_SPLITS = f"{RESULTS}/labels/splits.csv"
EVENTS_DIR = f"{RESULTS}/events"
STATS = f"{RESULTS}/stats/normalization.json"
VOCAB = f"{RESULTS}/stats/vocabulary.json"
EMBEDDING = f"{RESULTS}/embedding/embedding.safetensors"
SHARDS_DIR = f"{RESULTS}/shards"
QC = f"{RESULTS}/qc.json"
SEEDS = config["train"]["seeds"]
BASELINES = config["baseline"]["models"]
# the learning-rate grid (docs/training.md): the first lr_grid_seeds seeds train at every
# multiplier of the rule's peak rate, choose_lr picks one per batch size on validation
# data, and the compared runs are that rate's at every seed
LR_GRID = config["train"]["lr_grid"]
GRID_SEEDS = SEEDS[: config["train"]["lr_grid_seeds"]]
GRID_EPOCHS = config["train"]["lr_grid_epochs"]
# a grid with a budget of its own trains its own runs; else its runs are compared runs
SEPARATE_GRID = len(LR_GRID) > 1 and GRID_EPOCHS not in (None, config["train"]["epochs"])
RUN = "bs{bs}/lr{lr}/seed{seed}"  # one training job per (batch size, rate, seed)
RUN_DIR = f"{RESULTS}/runs/{RUN}"
GRID_RUN_DIR = f"{RESULTS}/grid_runs/{RUN}" if SEPARATE_GRID else RUN_DIR
LR_CHOICE = f"{RESULTS}/lr_grid/bs{{bs}}.json"
LR_CHOICES = expand(LR_CHOICE, bs=BATCH_SIZES)


def lr_tag(multiplier):
    """A multiplier as run directories spell it (seqsetvae.training.lr_grid.multiplier_tag)."""
    return format(float(multiplier), "g")


def grid_summaries(wildcards):
    """metrics.json of every grid run of one batch size (none for a grid of one rate)."""
    if len(LR_GRID) == 1:
        return []
    return expand(f"{GRID_RUN_DIR}/metrics.json", bs=wildcards.bs, lr=map(lr_tag, LR_GRID), seed=GRID_SEEDS)


def chosen_runs():
    """The compared runs, `bsB/lrM/seedS`: every seed at the rate chosen for its batch size."""
    runs = []
    for bs in BATCH_SIZES:
        if len(LR_GRID) == 1:  # known before anything runs: dry runs show every job
            tag = lr_tag(LR_GRID[0])
        else:
            with open(checkpoints.choose_lr.get(bs=bs).output[0]) as handle:
                tag = json.load(handle)["chosen"]["tag"]
        runs += [f"bs{bs}/lr{tag}/seed{seed}" for seed in SEEDS]
    return runs


def of_chosen_runs(pattern):
    """An input function: `pattern` (with {run}) for every compared run."""
    return lambda wildcards: [pattern.format(run=run) for run in chosen_runs()]


BASELINE_EVALS = expand(f"{RESULTS}/baselines/{{model}}.json", model=BASELINES)
REPORT = f"{REPORTS}/batch_comparison.md"
REPORT_JSON = f"{REPORTS}/batch_comparison.json"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
CONDA_ENV = "../../envs/seqsetvae.yaml"

# Every rule's shell is `logged {log} seqsetvae <stage> ...` (workflow/scripts/logged.sh):
# the stage's output goes to the rule's log; on failure its `error:` message is printed on
# the console too, even when the log cannot be written, and the exit status is passed on.
LOGGED_SH = os.path.normpath(os.path.join(workflow.current_basedir, "..", "scripts", "logged.sh"))
shell.prefix(f"set -euo pipefail; source {shlex.quote(LOGGED_SH)}; ")


wildcard_constraints:
    bs=r"\d+",
    seed=r"\d+",
    lr=r"[0-9.]+(e-?[0-9]+)?",


def settings(*sections):
    """The config sections a rule depends on, as one JSON string.

    Passed as a rule's params so that changing any of these keys reruns that rule,
    and only the rules that read the key. The evaluate section's `bootstrap_unit: auto`
    is resolved with data.format (subject for meds), which those rules do not read.
    """
    chosen = {name: config[name] for name in sections}
    if "evaluate" in chosen and chosen["evaluate"].get("bootstrap_unit", "auto") == "auto":
        unit = "subject" if FORMAT == "meds" else "patient"
        chosen["evaluate"] = {**chosen["evaluate"], "bootstrap_unit": unit}
    return json.dumps(chosen, sort_keys=True)


def train_settings(epochs=None):
    """The model and train sections without the lists of batch sizes, seeds and rates, for
    one training job: adding a batch size, a seed or a rate must not retrain the runs
    already done. `epochs`: another budget (the grid's own).
    """
    study = ("batch_sizes", "seeds", "lr_grid", "lr_grid_seeds", "lr_grid_epochs")
    train = {key: value for key, value in config["train"].items() if key not in study}
    if epochs is not None:
        train["epochs"] = epochs
    return json.dumps({"model": config["model"], "train": train}, sort_keys=True)


# the set VAE's pretraining stage (rule pretrain), when pretrain.epochs > 0
PRETRAIN = config["pretrain"]["epochs"] > 0
PRETRAINED = f"{RESULTS}/pretrain/setvae.safetensors"
# what the set VAE is built from; the model's other keys (sequence model, head, wide
# path, loss schedules) do not change the pretrained weights, so they do not rerun it
SET_VAE_MODEL_KEYS = (
    "reduced_dim", "latent_dim", "levels", "inducing_points", "heads", "dropout", "free_bits", "max_beta", "token"
)
SET_VAE_TRAIN_KEYS = ("device", "cpu_fallback", "threads", "mega_batch_factor", "max_skipped_batches")


def pretrain_settings():
    """The pretrain section and the model and train keys the pretraining stage reads, as
    one JSON string (rule pretrain's params)."""
    model = {key: config["model"][key] for key in SET_VAE_MODEL_KEYS if key in config["model"]}
    train = {key: config["train"][key] for key in SET_VAE_TRAIN_KEYS if key in config["train"]}
    return json.dumps({"pretrain": config["pretrain"], "model": model, "train": train}, sort_keys=True)


def pretrained_input():
    """A training job's pretrained weights: rule pretrain's output, or none."""
    return [PRETRAINED] if PRETRAIN else []


# every CSV a directory may hold, as docs/input_formats.md promises (any case)
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".csv.lz4")


def _expand_inputs(path):
    """A CSV file, a directory of CSVs or a glob, as a sorted list of files."""
    if path is None:
        raise ValueError(
            "data.source is 'files' but data.events or data.labels is not set"
        )
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        files = [
            os.path.join(path, name)
            for name in names
            if name.lower().endswith(CSV_SUFFIXES)
            and os.path.isfile(os.path.join(path, name))
        ]
        if not files:
            raise ValueError(
                f"data.events directory {path}: no CSV files in it (names ending in"
                f" {', '.join(CSV_SUFFIXES)}, in any case); it holds {len(names)} entries"
            )
        return files
    matches = sorted(glob.glob(path))
    return matches if matches else [path]


def raw_events():
    if SYNTHETIC:
        return [RAW_EVENTS]
    if FORMAT == "csv":
        return _expand_inputs(config["data"]["events"])
    if config["data"]["events"] is None:
        raise ValueError(f"data.format is {FORMAT!r} but data.events is not set")
    return [config["data"]["events"]]  # the dataset's directory


def format_labels_input():
    """The labels the format reads: the ACES task's (rule task), else data.labels."""
    if TASK:
        if FORMAT != "meds":
            raise ValueError(f"data.task is set, but data.format is {FORMAT!r}: ACES tasks need data.format: meds")
        return [TASK_LABELS]
    return [config["data"]["labels"]] if config["data"]["labels"] else []


def raw_labels():
    if SYNTHETIC:
        return RAW_LABELS
    return config["data"]["labels"] if FORMAT == "csv" else FORMAT_LABELS


def format_carries_splits():
    """A MEDS root with metadata/subject_splits.parquet, or the original's split folders."""
    if FORMAT == "seqsetvae_v0":
        return True
    splits = os.path.join(
        str(config["data"]["events"]), "metadata", "subject_splits.parquet"
    )
    return FORMAT == "meds" and os.path.isfile(splits)


def option(name, paths):
    """`--name 'path'` for an optional input or output, or nothing."""
    return f"{name} {shlex.quote(str(paths))}" if paths else ""


def splits_file():
    """The splits to use: data.splits, else the dataset's own, else none (random)."""
    if config["data"]["splits"]:
        return [config["data"]["splits"]]
    return [FORMAT_SPLITS] if not SYNTHETIC and format_carries_splits() else []


def job_threads(kind):
    """Threads of a training or evaluation job, as a function Snakemake calls per job.

    On one machine a job takes every core Snakemake was given, so that training jobs
    of different batch sizes never run side by side and distort each other's timings;
    on a cluster each job gets its own node share from `resources.<kind>.threads`
    (SLURM's --cpus-per-task). A function because the executor is not known yet while
    the Snakefile is parsed; and inside a cluster job Snakemake runs the rule again
    with a local executor over the whole node (`--cores all`, remote exec mode),
    where the job must keep the threads it was submitted with.
    """

    def threads(wildcards):
        if workflow.non_local_exec or workflow.remote_exec:
            return config["resources"][kind]["threads"]
        return workflow.cores

    return threads


def grid_job_threads(wildcards):
    """Threads a run of the grid's own budget claims: on a cluster its resources.train
    threads; on one machine a share of Snakemake's cores such that one such run goes on
    each CPU (its speed is not reported, and small models use one thread best)."""
    if workflow.non_local_exec or workflow.remote_exec:
        return config["resources"]["train"]["threads"]
    return max(1, workflow.cores // (os.cpu_count() or 1))


def grid_torch_threads(wildcards, threads):
    """The torch threads of that run: its threads on a cluster, one on one machine."""
    return threads if workflow.non_local_exec or workflow.remote_exec else 1


def job_gpus(kind):
    """GPUs a training or evaluation job asks for (the `gpu` resource).

    train.device cpu: none; cuda: `resources.<kind>.gpus`, at least 1 (a training job at
    least train.devices: one GPU per process); auto: as configured (0 by default, so a
    cluster job lands on a CPU node unless you ask; a training job given GPUs at least
    train.devices). The SLURM executor turns it into --gpus; profiles/local caps it
    at its `gpu` resource.
    """
    device = config["train"]["device"]
    gpus = config["resources"][kind].get("gpus", 0)
    devices = config["train"]["devices"] if kind == "train" else 1
    if device == "cpu":
        return 0
    if device == "cuda":
        return max(gpus, devices)
    return max(gpus, devices) if gpus else 0
