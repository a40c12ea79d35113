#!/usr/bin/env bash
# Regenerate docs/rulegraph.png (the README's picture of the pipeline) from the Snakefile.
# Run it after a pipeline run and pass that run's folder (default: the repository): the
# rules after the learning-rate choice (a checkpoint) show only once it has run. Uses
# Graphviz's `dot` when installed, else scripts/rulegraph.py (matplotlib, networkx).
set -euo pipefail
cd "$(dirname "$0")/.."
workdir="${1:-.}"
graph=$(snakemake --quiet all --rulegraph --cores 1 -d "$workdir")
if command -v dot > /dev/null; then
    dot -Tpng -Gdpi=96 -o docs/rulegraph.png <<< "$graph"
else
    python scripts/rulegraph.py docs/rulegraph.png <<< "$graph"
fi
echo "wrote docs/rulegraph.png"
