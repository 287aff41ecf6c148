"""Writing images: sample grids as PNG and raw arrays as .npy, atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaelab.errors import VaelabError
from vaelab.files import atomic_write_bytes


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one uint8 picture (rows, cols) or (rows, cols, 3), `nrow` images a row."""
    images = images.detach().float().clamp(0, 1).cpu()
    count, channels, height, width = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / nrow)
    tiles = torch.ones(rows * nrow, channels, height + padding, width + padding)  # white padding
    tiles[:count, :, padding:, padding:] = images
    grid = (tiles.view(rows, nrow, channels, height + padding, width + padding)
            .permute(2, 0, 3, 1, 4).reshape(channels, rows * (height + padding), nrow * (width + padding)))
    grid = torch.nn.functional.pad(grid, (0, padding, 0, padding), value=1.0)
    pixels = (grid * 255).round().to(torch.uint8).numpy()
    return pixels[0] if channels == 1 else pixels.transpose(1, 2, 0)


def save_images(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save (N, C, H, W) images as a PNG grid or, for a .npy path, as a float32 array."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise VaelabError(f"--out must end in .png or .npy, got {path.name!r}")
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, images.detach().float().cpu().numpy())
    else:
        Image.fromarray(image_grid(images, nrow)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
