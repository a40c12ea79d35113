"""`seqsetvae bench data|train`: benchmarks that print numbers (not timed unit tests)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {"data": "seqsetvae.benchmarks.data", "train": "seqsetvae.benchmarks.train"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: seqsetvae bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0)
