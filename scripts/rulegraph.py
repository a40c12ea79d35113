"""Draw `snakemake --rulegraph` output (DOT on stdin) as a PNG without Graphviz: rules in
layers by their longest path from the inputs, edges as arrows. Used by rulegraph.sh when
Graphviz's `dot` is missing.

    snakemake --quiet all --rulegraph --cores 1 | python scripts/rulegraph.py docs/rulegraph.png
"""

from __future__ import annotations

import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402


def main(argv: list[str]) -> int:
    text = sys.stdin.read()
    graph = nx.DiGraph()
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', text, re.MULTILINE))
    graph.add_nodes_from(labels.values())
    graph.add_edges_from((labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", text, re.MULTILINE))
    depth = {}
    for node in nx.topological_sort(graph):
        depth[node] = max((depth[p] + 1 for p in graph.predecessors(node)), default=0)
    layers: dict[int, list[str]] = {}
    for node, d in depth.items():
        layers.setdefault(d, []).append(node)
    position = {}
    for d, nodes in layers.items():
        for i, node in enumerate(sorted(nodes)):
            position[node] = (i - (len(nodes) - 1) / 2, -d)
    width = max(len(nodes) for nodes in layers.values())
    fig, ax = plt.subplots(figsize=(2.2 * width + 1, 1.0 * len(layers) + 1))
    nx.draw_networkx_edges(graph, position, ax=ax, edge_color="grey", arrows=True, arrowsize=12, node_size=2600)
    for node, (x, y) in position.items():
        ax.text(
            x,
            y,
            node,
            ha="center",
            va="center",
            fontsize=10,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "tab:blue", "linewidth": 1.5},
        )
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(argv[0], dpi=96)
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
