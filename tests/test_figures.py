"""vaelab.plots.figures: the comparison report's pictures have the sizes their inputs imply."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.plots import figures, graphs
from vaelab.plots.figures import Panel, graphs_figure, panel_figure, training_curves
from vaelab.registry import MODELS

PAD = 2  # image_grid's padding


def pixels(path) -> np.ndarray:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture)


def grid_side(count_per_row: int, size: int, scale: int) -> int:
    """Pixels across an image_grid of `count_per_row` images of `size`, enlarged `scale` times."""
    return (count_per_row * (size + PAD) + PAD) * scale


# -- panel_figure ---------------------------------------------------------------------------------

def test_untitled_panels_tile_exactly_at_one_scale(tmp_path):
    small, large = torch.rand(4, 1, 8, 8), torch.rand(1, 1, 16, 16)
    path = panel_figure([Panel("", small, nrow=2), Panel("", large)], tmp_path / "p.png", scale=3)
    height, width = pixels(path).shape
    margin, gap = figures.MARGIN, figures.TITLE_GAP
    assert width == margin + grid_side(2, 8, 3) + margin + grid_side(1, 16, 3) + margin
    assert height == margin + gap + grid_side(2, 8, 3) + margin  # the taller panel sets the row's height


@pytest.mark.parametrize("scale", [1, 3, 5])
def test_an_8x8_digit_is_enlarged_to_scale_times_8_pixels(tmp_path, scale):
    digit = torch.zeros(1, 1, 8, 8)  # one black digit
    big = torch.full((1, 1, 28, 28), 0.5)  # a second panel of larger images, at the same scale
    picture = pixels(panel_figure([Panel("", digit), Panel("", big)], tmp_path / "p.png", scale=scale))
    top, left = figures.MARGIN + figures.TITLE_GAP, figures.MARGIN
    black = np.argwhere(picture == 0)
    assert black.min(0).tolist() == [top + PAD * scale, left + PAD * scale]
    assert (black.max(0) - black.min(0) + 1).tolist() == [8 * scale, 8 * scale]
    assert len(black) == (8 * scale) ** 2
    assert (picture == 128).sum() == (28 * scale) ** 2  # the other panel: 28x28 at the same scale


def test_titles_and_captions_make_room_above_and_below(tmp_path):
    images = torch.rand(4, 1, 8, 8)
    bare = pixels(panel_figure([Panel("", images)], tmp_path / "bare.png"))
    titled = pixels(panel_figure([Panel("samples", images, caption="a caption " * 20)], tmp_path / "titled.png"))
    assert titled.shape[0] > bare.shape[0] + 10
    assert titled.shape[1] >= bare.shape[1]
    assert (titled < 128).any()  # text was drawn


def test_grey_panels_stay_grey_and_colour_stays_colour(tmp_path):
    grey = torch.rand(4, 1, 8, 8)
    red = torch.zeros(4, 3, 8, 8)
    red[:, 0] = 1.0
    with Image.open(panel_figure([Panel("grey", grey)], tmp_path / "grey.png")) as picture:
        assert picture.mode == "L"
    mixed = pixels(panel_figure([Panel("grey", grey), Panel("colour", red)], tmp_path / "mixed.png"))
    assert mixed.ndim == 3 and mixed.shape[2] == 3
    coloured = np.argwhere((mixed[..., 0] != mixed[..., 1]) | (mixed[..., 1] != mixed[..., 2]))
    grey_right_edge = figures.MARGIN + grid_side(2, 8, 3)
    assert len(coloured) > 0 and coloured[:, 1].min() > grey_right_edge  # only the colour panel has colour
    assert (mixed[coloured[:, 0], coloured[:, 1]] == [255, 0, 0]).all()


def test_columns_wrap_panels_into_rows(tmp_path):
    panels = [Panel("", torch.rand(1, 1, 8, 8)) for _ in range(3)]
    height, width = pixels(panel_figure(panels, tmp_path / "p.png", columns=2, scale=2)).shape
    side, margin, gap = grid_side(1, 8, 2), figures.MARGIN, figures.TITLE_GAP
    assert width == 3 * margin + 2 * side
    assert height == 3 * margin + 2 * (gap + side)


def test_bad_panels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one panel"):
        panel_figure([], tmp_path / "p.png")
    with pytest.raises(ValueError, match="images must be"):
        panel_figure([Panel("flat", torch.rand(4, 64))], tmp_path / "p.png")
    with pytest.raises(ValueError, match="scale"):
        panel_figure([Panel("x", torch.rand(1, 1, 8, 8))], tmp_path / "p.png", scale=0)


# -- training_curves ------------------------------------------------------------------------------

def subplot_pixels() -> tuple[int, int]:
    width, height = figures.CURVE_SUBPLOT_INCHES
    return round(width * figures.CURVE_DPI), round(height * figures.CURVE_DPI)


def test_curves_take_one_subplot_per_model_in_a_grid(tmp_path):
    lines = [{"epoch": epoch, "train_loss": 10.0 / epoch, "val_loss": 11.0 / epoch} for epoch in range(1, 6)]
    curves = {name: lines for name in ("vae", "cvae", "ae", "dae", "rbm")}  # 5 models: 4 columns, 2 rows
    height, width = pixels(training_curves(curves, tmp_path / "curves.png")).shape[:2]
    subplot_width, subplot_height = subplot_pixels()
    assert (width, height) == (4 * subplot_width, 2 * subplot_height)
    height, width = pixels(training_curves({"vae": lines}, tmp_path / "one.png")).shape[:2]
    assert (width, height) == subplot_pixels()


def test_curves_skip_missing_keys_and_draw_both_gan_players(tmp_path):
    gan = [{"epoch": epoch, "train_d_loss": 1.3, "train_g_loss": 0.7 + epoch / 10, "val_d_loss": 1.2}
           for epoch in range(1, 4)]
    sparse = [{"epoch": 1, "train_loss": 5.0}, {"epoch": 2}, {"epoch": 3, "train_loss": None, "val_loss": 4.0}]
    no_epoch = [{"train_loss": 3.0}, {"train_loss": 2.0}]
    curves = {"gan": gan, "sparse": sparse, "no_epoch": no_epoch, "empty": [], "nothing": [{"epoch": 1}]}
    picture = pixels(training_curves(curves, tmp_path / "curves.png"))
    subplot_width, subplot_height = subplot_pixels()
    assert picture.shape[:2] == (2 * subplot_height, 4 * subplot_width)
    red = (picture[..., 0] > 150) & (picture[..., 1] < 80) & (picture[..., 2] < 80)  # the discriminator's colour
    assert red[:, :subplot_width].any()


def test_curves_of_no_models_still_write_a_picture(tmp_path):
    assert pixels(training_curves({}, tmp_path / "curves.png")).shape[:2] == subplot_pixels()[::-1]


def test_curve_points_skip_lines_without_the_key():
    lines = [{"epoch": 2, "val_loss": 1.0}, {"epoch": 3, "val_loss": float("nan")}, {"val_loss": True}]
    assert figures._points(lines, "val_loss")[0] == (2.0, 1.0)
    assert len(figures._points(lines, "val_loss")) == 2  # NaN drawn as a gap, a bool is not a number
    assert figures._points(lines, "train_loss") == []


# -- graphs_figure --------------------------------------------------------------------------------

def tiny_graph(title: str, layers: int) -> TrainingGraph:
    nodes = tuple(Node(f"n{i}", f"node {i}", "network", highlight=i == 1) for i in range(layers))
    return TrainingGraph(title, nodes, tuple((f"n{i}", f"n{i + 1}") for i in range(layers - 1)))


def test_graphs_figure_is_as_large_as_its_rows(tmp_path):
    small, wide = tiny_graph("small", 2), tiny_graph("wide", 5)
    picture = pixels(graphs_figure({"small": small, "wide": wide}, tmp_path / "graphs.png"))
    small_height, (wide_width, wide_height) = graphs.figure_size(small)[1], graphs.figure_size(wide)
    dpi = figures.GRAPH_DPI
    expected = (round((small_height + wide_height + 0.6) * dpi), round(wide_width * dpi))  # (height, width)
    assert abs(picture.shape[0] - expected[0]) <= 1 and abs(picture.shape[1] - expected[1]) <= 1
    blue = np.all(picture[..., :3] == [0x2B, 0x6C, 0xB0], axis=-1)  # the highlighted node
    assert blue.sum() > 100


def test_the_seven_training_graphs_fill_two_rows_evenly(tmp_path):
    seven = {name: MODELS[name].training_graph() for name in ("vae", "cvae", "ae", "dae", "rbm", "gsn", "gan")}
    widths = [graphs.figure_size(graph)[0] for graph in seven.values()]
    assert figures._split_rows(widths, 2) == [[0, 1, 2, 3], [4, 5, 6]]
    picture = pixels(graphs_figure(seven, tmp_path / "graphs.png"))
    assert picture.shape[1] > 2 * picture.shape[0]


def test_rows_split_in_order_with_the_narrowest_widest_row():
    assert figures._split_rows([1, 1, 1, 1], 2) == [[0, 1], [2, 3]]
    assert figures._split_rows([5, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    assert figures._split_rows([1, 2], 5) == [[0], [1]]
    assert figures._split_rows([3], 2) == [[0]]
