"""vaelab.plots does nothing at import: no pyplot, no backend switch; matplotlib loads only to draw.

Each check runs in a fresh interpreter (`python -c`), so that what this test process has already
imported cannot hide an import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.plots.graphs import draw

# matplotlib.get_backend() itself imports pyplot while no backend is chosen, so the checks pick
# one through MPLBACKEND; the old module switched any backend to Agg at import.
BACKEND_CHECK = """
import json, sys
import matplotlib
before = matplotlib.get_backend()
{action}
print(json.dumps({{"pyplot": "matplotlib.pyplot" in sys.modules, "before": before,
                   "after": matplotlib.get_backend()}}))
"""
IMPORT = "import vaelab.plots, vaelab.plots.figures, vaelab.plots.graphs, vaelab.plots.images"
DRAW = IMPORT + """
from vaelab.models.training_graph import Node, TrainingGraph
graph = TrainingGraph("t", (Node("x", "x", "input"), Node("kl", "KL", "cost", highlight=True)), (("x", "kl"),))
vaelab.plots.graphs.draw(graph, {path!r})
"""
FIGURES = IMPORT + """
import torch
from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.plots.figures import Panel, graphs_figure, panel_figure, training_curves
graph = TrainingGraph("t", (Node("x", "x", "input"), Node("kl", "KL", "cost", highlight=True)), (("x", "kl"),))
graphs_figure({{"t": graph}}, {path!r} + "/graphs.png")
training_curves({{"t": [{{"epoch": 1, "train_loss": 1.0}}]}}, {path!r} + "/curves.png")
panel_figure([Panel("p", torch.rand(4, 1, 8, 8))], {path!r} + "/panels.png")
"""
BLUE = (0x2B, 0x6C, 0xB0)  # the highlighted extra cost (VAE KL), the colour of the original comparison figure
RED = (0xE3, 0x4A, 0x33)  # its colour before


def run_python(code: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**environment, **env})
    return result.stdout


@pytest.mark.parametrize("backend", ["svg", "pdf"])
def test_importing_the_plots_imports_no_pyplot_and_keeps_the_backend(backend):
    seen = json.loads(run_python(BACKEND_CHECK.format(action=IMPORT), MPLBACKEND=backend))
    assert not seen["pyplot"]
    assert seen["before"] == seen["after"] == backend


def test_importing_the_plots_imports_no_matplotlib_at_all():
    code = IMPORT + "\nimport sys; print(sorted(name for name in sys.modules if name.split('.')[0] == 'matplotlib'))"
    assert run_python(code).strip() == "[]"


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_drawing_a_graph_imports_no_pyplot_and_keeps_the_backend(tmp_path, suffix):
    path = tmp_path / f"graph{suffix}"
    seen = json.loads(run_python(BACKEND_CHECK.format(action=DRAW.format(path=str(path))), MPLBACKEND="pdf"))
    assert not seen["pyplot"]
    assert seen["before"] == seen["after"] == "pdf"
    assert path.stat().st_size > 0


def test_drawing_the_report_figures_imports_no_pyplot_and_keeps_the_backend(tmp_path):
    seen = json.loads(run_python(BACKEND_CHECK.format(action=FIGURES.format(path=str(tmp_path))), MPLBACKEND="pdf"))
    assert not seen["pyplot"]
    assert seen["before"] == seen["after"] == "pdf"
    assert {path.name for path in tmp_path.iterdir()} == {"graphs.png", "curves.png", "panels.png"}


def test_draw_writes_a_png(tmp_path):
    graph = TrainingGraph("t", (Node("x", "x", "input"), Node("kl", "KL", "cost", highlight=True)), (("x", "kl"),))
    path = draw(graph, tmp_path / "graph.png")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.width > 100 and picture.height > 100


def test_the_highlighted_kl_node_is_blue_not_red(tmp_path):
    graph = TrainingGraph("t", (Node("x", "x", "input"), Node("kl", "KL", "cost", highlight=True)), (("x", "kl"),))
    with Image.open(draw(graph, tmp_path / "graph.png")) as picture:
        colours = {colour for _, colour in picture.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert BLUE in colours
    assert RED not in colours
