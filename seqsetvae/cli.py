"""The `seqsetvae` console script: one subcommand per pipeline stage.

Each subcommand lives in its own module with a ``main(argv) -> int`` function; the
module is imported only when its subcommand runs, so that `seqsetvae ingest` does not
pay for importing torch.
"""

from __future__ import annotations

import errno
import importlib
import sys

from seqsetvae.errors import InputError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synthetic": ("seqsetvae.data.synthetic", "write ICU-like raw event and label CSVs"),
    "labels": ("seqsetvae.data.formats", "a MEDS / PhysioNet / v0 dataset's labels and splits as CSVs"),
    "task": ("seqsetvae.data.formats.aces_task", "a MEDS task's labels from an ACES task configuration (data.task)"),
    "splits": ("seqsetvae.data.splits", "assign patients to train/valid/test"),
    "ingest": ("seqsetvae.data.ingest", "validate raw events into patient partitions"),
    "stats": ("seqsetvae.data.stats", "train-split vocabulary and normalisation statistics"),
    "embedding": ("seqsetvae.data.embedding", "build the frozen variable embedding table"),
    "shards": ("seqsetvae.data.shards", "sets, truncation, length sorting, sharded tensors"),
    "qc": ("seqsetvae.data.qc", "merge the stages' row and patient counts into qc.json"),
    "meds-predictions": ("seqsetvae.data.formats.meds:predictions_main", "a run's test predictions in the MEDS layout"),
    "pretrain": ("seqsetvae.training.pretrain", "pretrain the set VAE alone on the train split's sets"),
    "train": ("seqsetvae.training.train", "train SeqSetVAE at one batch size"),
    "choose-lr": ("seqsetvae.training.lr_grid", "the learning rate of one batch size, from its grid's validation"),
    "evaluate": ("seqsetvae.evaluation.evaluate", "test-split metrics of one trained run"),
    "baseline": ("seqsetvae.evaluation.baseline", "scikit-learn baselines on per-patient summaries"),
    "memory": ("seqsetvae.evaluation.memory", "memory report of one batch size"),
    "report": ("seqsetvae.reports.batch_comparison", "reports/batch_comparison.md"),
    "bench": ("seqsetvae.benchmarks", "benchmarks: `bench data` and `bench train`"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: seqsetvae <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`seqsetvae <command> --help` describes a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        from seqsetvae import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"seqsetvae: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[name][0].partition(":")
    entry = getattr(importlib.import_module(module_name), function or "main")
    try:
        return int(entry(rest) or 0)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT) and "No space left on device" not in str(error):
            raise
        # what was being written is removed (seqsetvae.io.atomic_path); say where and why
        where = f"{error.filename}: " if error.filename else ""
        print(
            f"error: {where}no space left on device ({error}); free space on that disk, or set `results:` "
            f"to a larger one, and rerun",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
