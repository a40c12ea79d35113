#!/usr/bin/env bash
# Regenerate docs/rulegraph.png (the README's picture of the pipeline) from the Snakefile.
# Needs Graphviz's `dot` (apt-get install graphviz / conda install graphviz).
set -euo pipefail
cd "$(dirname "$0")/.."
snakemake --quiet all --rulegraph | dot -Tpng -Gdpi=96 -o docs/rulegraph.png
echo "wrote docs/rulegraph.png"
