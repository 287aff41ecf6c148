"""The comparison figures: image panels side by side, training curves, and the training graphs.

- `panel_figure`: titled image grids (samples, reconstructions, interpolations, chains, a latent
  manifold, nearest neighbours) drawn with PIL at one integer pixel scale, so 8x8 digits stay
  sharp and every panel is enlarged alike.
- `training_curves`: one small loss plot per model, from metrics.jsonl lines.
- `graphs_figure`: every model's training graph in one picture, drawn by vaelab.plots.graphs.

Nothing happens at import: matplotlib is loaded inside the functions that draw with it, on a bare
Figure with its own Agg canvas (no pyplot, the process's backend left alone).
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from vaelab.files import atomic_write_bytes
from vaelab.models.training_graph import TrainingGraph
from vaelab.plots.images import image_grid

MARGIN = 12  # pixels around the figure and between panels
TITLE_GAP = 4  # pixels between a title and its grid
TEXT_COLOUR = 0  # black, in either picture mode
CAPTION_COLOUR = 90  # dark grey
CURVE_DPI = 100
CURVE_SUBPLOT_INCHES = (3.2, 2.5)  # (width, height) of one model's loss plot
CURVE_COLUMNS = 4
# metrics.jsonl key -> (legend label, colour, line style); train solid, validation dashed.
CURVES = {
    "train_loss": ("train", "#2b6cb0", "-"),
    "val_loss": ("val", "#2b6cb0", "--"),
    "train_d_loss": ("train D", "#c53030", "-"),
    "val_d_loss": ("val D", "#c53030", "--"),
    "train_g_loss": ("train G", "#2f855a", "-"),
    "val_g_loss": ("val G", "#2f855a", "--"),
}
GRAPH_DPI = 100


@dataclass(frozen=True)
class Panel:
    """One titled image grid: images (N, C, H, W) in [0, 1], `nrow` of them a row (default: square)."""

    title: str
    images: torch.Tensor
    nrow: int | None = None
    caption: str = ""


# -- image panels ---------------------------------------------------------------------------------

def panel_figure(panels: Sequence[Panel], path: str | Path, *, scale: int = 3, columns: int | None = None) -> Path:
    """Draw the panels left to right, `columns` a row (default: all in one row), each image grid
    enlarged `scale` times with nearest-neighbour resampling and titled above; a PNG on white.

    All panels share one pixel scale. The picture is grey ("L") when every panel is grey and RGB
    otherwise; a grey panel in an RGB picture stays grey."""
    if not panels:
        raise ValueError("panel_figure needs at least one panel")
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    columns = max(1, min(columns or len(panels), len(panels)))
    font, small_font = _font(14), _font(11)
    grids = [_enlarged_grid(panel, scale) for panel in panels]
    mode = "L" if all(grid.mode == "L" for grid in grids) else "RGB"
    cells = [_cell(panel, grid, font, small_font, mode) for panel, grid in zip(panels, grids, strict=True)]
    rows = [cells[start:start + columns] for start in range(0, len(cells), columns)]
    column_widths = [max(row[i].width for row in rows if i < len(row)) for i in range(columns)]
    row_heights = [max(cell.height for cell in row) for row in rows]
    canvas = Image.new(mode, (sum(column_widths) + MARGIN * (columns + 1),
                              sum(row_heights) + MARGIN * (len(rows) + 1)), _white(mode))
    top = MARGIN
    for row, height in zip(rows, row_heights, strict=True):
        left = MARGIN
        for cell, width in zip(row, column_widths, strict=False):
            canvas.paste(cell, (left, top))
            left += width + MARGIN
        top += height + MARGIN
    return _save_png(canvas, path)


def _enlarged_grid(panel: Panel, scale: int) -> Image.Image:
    """The panel's image grid, every pixel a scale x scale block: "L" for grey images, else "RGB"."""
    if panel.images.dim() != 4 or panel.images.shape[1] not in (1, 3):
        raise ValueError(f"panel {panel.title!r}: images must be (N, 1 or 3, H, W), got {tuple(panel.images.shape)}")
    grid = Image.fromarray(image_grid(panel.images, panel.nrow))  # (rows, cols) or (rows, cols, 3)
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)


def _cell(panel: Panel, grid: Image.Image, font, small_font, mode: str) -> Image.Image:
    """Title over the grid over the (wrapped) caption, left-aligned, on white."""
    measure = ImageDraw.Draw(Image.new(mode, (1, 1)))
    title_size = _text_size(measure, panel.title, font)
    width = max(grid.width, title_size[0])
    caption = _wrap(measure, panel.caption, small_font, max(width, 160)) if panel.caption else []
    line_height = _text_size(measure, "Ag", small_font)[1] + 2
    width = max([width] + [_text_size(measure, line, small_font)[0] for line in caption])
    height = title_size[1] + TITLE_GAP + grid.height + (TITLE_GAP + line_height * len(caption) if caption else 0)
    cell = Image.new(mode, (width, height), _white(mode))
    draw = ImageDraw.Draw(cell)
    draw.text((0, 0), panel.title, fill=_grey(mode, TEXT_COLOUR), font=font)
    cell.paste(grid.convert(mode), (0, title_size[1] + TITLE_GAP))
    y = title_size[1] + 2 * TITLE_GAP + grid.height
    for line in caption:
        draw.text((0, y), line, fill=_grey(mode, CAPTION_COLOUR), font=small_font)
        y += line_height
    return cell


def _font(size: int):
    """Pillow's built-in font at `size` points (FreeType builds); its fixed bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    """(width, height) of text drawn from its top-left corner, in pixels."""
    if not text:
        return 0, 0
    _, _, right, bottom = draw.textbbox((0, 0), text, font=font)
    return math.ceil(right), math.ceil(bottom)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Break text into lines no wider than `width` pixels, at spaces (a longer word keeps its line)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and _text_size(draw, candidate, font)[0] <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _white(mode: str) -> int | tuple[int, int, int]:
    return 255 if mode == "L" else (255, 255, 255)


def _grey(mode: str, level: int) -> int | tuple[int, int, int]:
    return level if mode == "L" else (level, level, level)


def _save_png(picture: Image.Image, path: str | Path) -> Path:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


# -- training curves ------------------------------------------------------------------------------

def training_curves(curves: dict[str, list[dict]], path: str | Path) -> Path:
    """One loss plot per model in a grid of subplots (x: epoch), from metrics.jsonl-style lines.

    Each plot shows whichever of train_loss / val_loss and, for the GAN, the discriminator's and
    generator's train and val losses its lines hold, with a legend; a model without any gets an
    empty plot saying "no curve". The PNG is exactly columns x 320 by rows x 250 pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(curves) or ["(no models)"]
    columns = min(CURVE_COLUMNS, len(names))
    rows = math.ceil(len(names) / columns)
    width, height = CURVE_SUBPLOT_INCHES
    figure = Figure(figsize=(width * columns, height * rows), dpi=CURVE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes_grid = figure.subplots(rows, columns, squeeze=False)  # (rows, columns) of Axes
    for index, axes in enumerate(axes_grid.flat):
        if index < len(names):
            _plot_curve(axes, names[index], curves.get(names[index], []))
        else:
            axes.axis("off")
    return _save_figure(figure, path, CURVE_DPI)


def _plot_curve(axes, name: str, lines: list[dict]) -> None:
    """The loss curves of one model, or "no curve" when its lines hold none."""
    axes.set_title(name, fontsize=10)
    drawn = 0
    for key, (label, colour, style) in CURVES.items():
        points = _points(lines, key)  # [(epoch, value)]
        if points:
            epochs, values = zip(*points, strict=True)
            axes.plot(epochs, values, style, color=colour, label=label, lw=1.4,
                      marker="o" if len(points) == 1 else None, ms=3)
            drawn += 1
    if not drawn:
        axes.text(0.5, 0.5, "no curve", ha="center", va="center", color="#888888", transform=axes.transAxes)
        axes.set_xticks([])
        axes.set_yticks([])
        return
    axes.set_xlabel("epoch", fontsize=8)
    axes.set_ylabel("loss", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, frameon=False)


def _points(lines: list[dict], key: str) -> list[tuple[float, float]]:
    """(epoch, value) of every line that has a numeric `key`; a line without "epoch" counts from 1."""
    points = []
    for position, line in enumerate(lines, start=1):
        value = line.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            points.append((float(line.get("epoch", position)), float(value)))
    return points


def _save_figure(figure: Any, path: str | Path, dpi: int) -> Path:
    """Save a matplotlib Figure as PNG at its own size (no tight cropping), atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


# -- training graphs ------------------------------------------------------------------------------

def graphs_figure(graphs: dict[str, TrainingGraph], path: str | Path, *, rows: int = 2) -> Path:
    """Every training graph in one PNG: a grid of `rows` rows (graphs kept in order, split where the
    rows come out closest in width), each graph drawn by vaelab.plots.graphs, one colour key beneath.

    The picture is exactly its figure size at GRAPH_DPI: every row as wide as the widest, every
    graph given room in proportion to its layers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vaelab.plots.graphs import draw_on_axes, figure_size, frame_axes, legend_handles

    if not graphs:
        raise ValueError("graphs_figure needs at least one graph")
    items = list(graphs.values())
    sizes = [figure_size(graph) for graph in items]  # (width, height) inches, as `draw` would use
    groups = _split_rows([width for width, _ in sizes], rows)  # [[index, ...] per row]
    row_width = max(sum(sizes[i][0] for i in group) for group in groups)
    row_heights = [max(sizes[i][1] for i in group) for group in groups]
    figure = Figure(figsize=(row_width, sum(row_heights) + 0.6), dpi=GRAPH_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes_of = _graph_axes(figure, groups, sizes, row_width, row_heights)
    for index, axes in axes_of.items():
        frame_axes(axes, items[index])
    figure.legend(handles=legend_handles(), loc="outside lower center", ncol=len(legend_handles()),
                  fontsize=9, frameon=False)
    figure.canvas.draw()
    figure.set_layout_engine("none")  # freeze the layout: boxes are measured against these axes
    for index, axes in axes_of.items():
        draw_on_axes(axes, items[index], legend=False)
    return _save_figure(figure, path, GRAPH_DPI)


def _graph_axes(figure: Any, groups: list[list[int]], sizes: list[tuple[float, float]],
                row_width: float, row_heights: list[float]) -> dict[int, Any]:
    """One subfigure a row, its graphs' axes as wide as their own figures; a short row ends blank."""
    subfigures = figure.subfigures(len(groups), 1, height_ratios=row_heights, squeeze=False)[:, 0]
    axes_of = {}
    for subfigure, group in zip(subfigures, groups, strict=True):
        widths = [sizes[i][0] for i in group]
        spare = row_width - sum(widths)
        ratios = widths + ([spare] if spare > 1e-6 else [])
        row_axes = subfigure.subplots(1, len(ratios), width_ratios=ratios, squeeze=False)[0]
        for index, axes in zip(group, row_axes, strict=False):
            axes_of[index] = axes
        for blank in row_axes[len(group):]:
            blank.axis("off")
    return axes_of


def _split_rows(widths: list[float], rows: int) -> list[list[int]]:
    """Split indices 0..n-1, in order, into at most `rows` consecutive groups with the widest group
    as narrow as possible."""
    count = len(widths)
    rows = max(1, min(rows, count))
    best: list[list[int]] = [list(range(count))]
    best_width = sum(widths)
    for cuts in itertools.combinations(range(1, count), rows - 1):
        bounds = (0, *cuts, count)
        groups = [list(range(start, end)) for start, end in itertools.pairwise(bounds)]
        widest = max(sum(widths[i] for i in group) for group in groups)
        if widest < best_width - 1e-9:
            best, best_width = groups, widest
    return best
