"""Draw a model's training graph (vaelab.models.training_graph) as SVG or PNG.

networkx orders the nodes into layers along the flow of computation (topological generations);
matplotlib draws them left to right, one shape and colour per kind of node, so graphs of
different models read the same way. The highlighted node (the VAE's KL term) is drawn in blue,
the colour of the original comparison figure.
"""

from __future__ import annotations

import io
from pathlib import Path

from vaelab.errors import VaelabError
from vaelab.files import atomic_write_bytes
from vaelab.models.training_graph import Node, TrainingGraph

STYLE = {  # kind -> (box style, fill colour)
    "input": ("square,pad=0.4", "#d9d9d9"),
    "network": ("round,pad=0.5", "#c6dbef"),
    "noise": ("round,pad=0.3", "#fff2b3"),
    "sampled": ("round4,pad=0.4", "#c7e9c0"),
    "cost": ("sawtooth,pad=0.4", "#fdd0a2"),
    "output": ("round4,pad=0.4", "#e5d8ef"),
}
HIGHLIGHT = "#2b6cb0"  # blue, the colour of the original comparison figure
ARC_BULGE = 0.45  # how far (in rows) an edge that skips layers bends away from the straight line


def layout(graph: TrainingGraph) -> dict[str, tuple[float, float]]:
    """x: the node's layer, y: its place within the layer (declaration order, top down).

    Layers follow the longest path from the inputs; a source node other than the first input
    (noise, a label) moves right to sit just before the first node it feeds, so it is drawn
    beside where it enters the computation."""
    import networkx as nx

    dag = nx.DiGraph()
    dag.add_nodes_from(node.name for node in graph.nodes)
    dag.add_edges_from(graph.edges)
    if not nx.is_directed_acyclic_graph(dag):
        raise VaelabError(f"the {graph.title} training graph has a cycle")
    layer = {}
    for depth, names in enumerate(nx.topological_generations(dag)):
        layer.update(dict.fromkeys(names, depth))
    first = graph.nodes[0].name
    for name in dag.nodes:
        if name != first and dag.in_degree(name) == 0 and dag.out_degree(name) > 0:
            layer[name] = min(layer[successor] for successor in dag.successors(name)) - 1
    positions = {}
    for depth in sorted(set(layer.values())):
        order = [node.name for node in graph.nodes if layer[node.name] == depth]
        for row, name in enumerate(order):
            positions[name] = (float(depth), (len(order) - 1) / 2.0 - row)
    return positions


def draw(graph: TrainingGraph, path: str | Path) -> Path:
    """Render the graph to path (.svg or .png), atomically.

    It draws on a bare matplotlib Figure with its own Agg canvas: no pyplot, and the process's
    matplotlib backend is left as it was."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() not in (".svg", ".png"):
        raise VaelabError(f"--out must end in .svg or .png, got {path.name!r}")
    figure = Figure(figsize=figure_size(graph))
    FigureCanvasAgg(figure)  # files only, no screen
    draw_on_axes(figure.subplots(), graph)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lower()[1:], bbox_inches="tight", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def figure_size(graph: TrainingGraph) -> tuple[float, float]:
    """(width, height) in inches that gives the graph's boxes room: 2.2 a layer, 1.3 a row."""
    width, height = _extent(layout(graph))
    return 2.2 * width + 1, 1.3 * (height + ARC_BULGE) + 1.2


def draw_on_axes(axes, graph: TrainingGraph, *, legend: bool = True) -> None:
    """Draw the graph onto a matplotlib Axes whose figure has a canvas: boxes, arrows, title and
    (with `legend`) the colour key beneath it. `draw` and plots.figures.graphs_figure both use it."""
    positions = layout(graph)
    frame_axes(axes, graph, positions)
    texts = {node.name: _draw_node(axes, node, positions[node.name]) for node in graph.nodes}
    axes.figure.canvas.draw()  # lay the boxes out so arrows can start and end at their outlines
    half_sizes = {name: _half_size(axes, text) for name, text in texts.items()}
    for source, target in graph.edges:
        _draw_edge(axes, positions[source], positions[target], half_sizes[source], half_sizes[target])
    if legend:
        axes.legend(handles=legend_handles(), loc="upper center", bbox_to_anchor=(0.5, -0.02),
                    ncol=len(STYLE) + 1, fontsize=8, frameon=False)


def frame_axes(axes, graph: TrainingGraph, positions: dict[str, tuple[float, float]] | None = None) -> None:
    """Set the axes' limits, title and bare frame for the graph, before anything is measured."""
    width, height = _extent(positions or layout(graph))
    axes.set_xlim(-0.6, width - 0.4)
    axes.set_ylim(-height / 2 - 0.3, height / 2 + 0.3 + ARC_BULGE)
    axes.set_title(graph.title, fontsize=12)
    axes.axis("off")


def _extent(positions: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """(layers, rows) the laid-out graph spans."""
    width = max(x for x, _ in positions.values()) + 1
    height = max(abs(y) for _, y in positions.values()) * 2 + 1
    return width, height


def _draw_node(axes, node: Node, position: tuple[float, float]):
    """One node: its label in a box of its kind's shape and fill; the highlight is filled blue."""
    box, fill = STYLE[node.kind]
    edge_colour = HIGHLIGHT if node.highlight else "#333333"
    return axes.text(
        *position, node.label, ha="center", va="center", fontsize=10, zorder=2,
        fontweight="bold" if node.highlight else "normal", color="white" if node.highlight else "black",
        bbox=dict(boxstyle=box, fc=HIGHLIGHT if node.highlight else fill, ec=edge_colour,
                  lw=2.5 if node.highlight else 1.0, ls="--" if node.kind == "noise" else "-"))


def _draw_edge(axes, source, target, source_half_size, target_half_size) -> None:
    """An arrow from the source box's outline to the target's."""
    start = _on_outline(source, target, source_half_size)
    end = _on_outline(target, source, target_half_size)
    span = abs(target[0] - source[0])
    # Edges that skip layers arc over them, about ARC_BULGE above the straight line, and pass
    # beneath the boxes they cross.
    bend = 0.0 if span <= 1 else -2 * ARC_BULGE / span
    axes.annotate("", xy=end, xytext=start, zorder=3 if span <= 1 else 1,
                  arrowprops=dict(arrowstyle="-|>", color="#555555", lw=1.2, shrinkA=0, shrinkB=0,
                                  mutation_scale=14, connectionstyle=f"arc3,rad={bend}"))


def _half_size(axes, text) -> tuple[float, float]:
    """Half the width and height of a text's box, in data units."""
    extent = text.get_bbox_patch().get_window_extent().transformed(axes.transData.inverted())
    return extent.width / 2 + 0.02, extent.height / 2 + 0.02


def _on_outline(centre, towards, half_size) -> tuple[float, float]:
    """Where the straight line from centre towards another point leaves the box around centre."""
    dx, dy = towards[0] - centre[0], towards[1] - centre[1]
    scale = min(half_size[0] / abs(dx) if dx else float("inf"), half_size[1] / abs(dy) if dy else float("inf"))
    return centre[0] + dx * scale, centre[1] + dy * scale


def legend_handles() -> list:
    """The colour key: one square per kind of node, then the highlighted extra cost."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="s", ls="", ms=10, mfc=fill, mec="#333333", label=kind)
               for kind, (_, fill) in STYLE.items()]
    handles.append(Line2D([], [], marker="s", ls="", ms=10, mfc=HIGHLIGHT, mec=HIGHLIGHT,
                          label="extra cost (VAE KL)"))
    return handles
