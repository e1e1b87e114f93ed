"""A quick-look PNG: one axial and one coronal slice with the segments drawn over them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medhub.hub.card import SegmentSpec
from medhub.io.files import atomic_path
from medhub.io.orientation import apply_canonical, canonical_transform
from medhub.io.volume import Volume

#: Colours of segments that bring none of their own, in order.
FALLBACK_COLORS = [(230, 80, 60), (60, 140, 230), (80, 200, 90), (240, 200, 40), (200, 90, 220)]


def window(array: np.ndarray, level: float = -300.0, width: float = 1400.0) -> np.ndarray:
    """Map intensities to 0..255 with a CT window (level/width in HU; the default shows lung and soft tissue)."""
    low = level - width / 2
    return (np.clip((array.astype(np.float32) - low) / width, 0, 1) * 255).astype(np.uint8)


def write_overlay_png(
    volume: Volume, labels: np.ndarray, segments: Sequence[SegmentSpec], path: str | Path,
    level: float = -300.0, width: float = 1400.0, caption: str = "",
) -> Path:
    """Write an axial and a coronal slice side by side, through the centre of the rarest non-empty label (the
    most specific finding, e.g. calcium rather than the heart), with ``caption`` below.

    Pixels are resampled to square millimetres so anatomy keeps its proportions.
    """
    # canonical order is the radiological display: rows anterior to posterior, columns patient right to left
    orientation = canonical_transform(volume.direction)
    image = apply_canonical(volume.array, orientation)
    mask = apply_canonical(labels, orientation)
    sz, sy, sx = (volume.spacing[axis] for axis in orientation[0])
    counts = np.bincount(mask.ravel(), minlength=256)[1:]
    if counts.any():
        rarest = int(np.argmin(np.where(counts > 0, counts, counts.max() + 1))) + 1
        cz, cy, _ = (round(c) for c in np.argwhere(mask == rarest).mean(axis=0))
    else:
        cz, cy = image.shape[0] // 2, image.shape[1] // 2
    colors = {s.label: s.color_rgb or fallback_color(i) for i, s in enumerate(segments)}
    panels = [
        _panel(image[cz], mask[cz], colors, sy, sx, level, width),
        _panel(image[::-1, cy], mask[::-1, cy], colors, sz, sx, level, width),  # head at the top
    ]
    height = max(p.height for p in panels)
    text_height = 18 if caption else 0
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), height + text_height), (0, 0, 0))
    x = 0
    for p in panels:
        canvas.paste(p, (x, (height - p.height) // 2))
        x += p.width + 8
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "R", fill=(255, 255, 0))
    if caption:
        draw.text((4, height + 3), caption, fill=(255, 255, 255))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def _panel(gray: np.ndarray, mask: np.ndarray, colors: dict[int, tuple[int, int, int]],
           row_mm: float, col_mm: float, level: float, width: float) -> Image.Image:
    fills = [(mask == label, color) for label, color in colors.items()]
    return render_slice(gray, row_mm, col_mm, level, width, fills=fills, size=512)


#: Display windows (level, width) in HU, as radiology viewers name them.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


def fallback_color(index: int) -> tuple[int, int, int]:
    """The display colour of the ``index``-th segment that has none."""
    return FALLBACK_COLORS[index % len(FALLBACK_COLORS)]


def auto_window(gray: np.ndarray) -> tuple[float, float]:
    """A (level, width) spanning the 1st to 99th percentile: for images without a unit such as HU (MR)."""
    low, high = np.percentile(gray, [1, 99])
    return float((low + high) / 2), float(max(high - low, 1e-6))


def render_slice(gray: np.ndarray, row_mm: float, col_mm: float, level: float, width: float, *,
                 fills: Sequence[tuple[np.ndarray, Sequence[int]]] = (),
                 outlines: Sequence[tuple[np.ndarray, Sequence[int]]] = (), size: int | None = 512,
                 opacity: float = 0.45) -> Image.Image:
    """One 2D slice as an RGB picture: ``gray`` windowed at ``level``/``width``, each ``(mask, rgb)`` of ``fills``
    blended in at ``opacity`` and each of ``outlines`` drawn as its one-pixel border; resampled to square
    millimetres with the longer side ``size`` pixels (``None`` keeps one pixel per voxel)."""
    rgb = np.repeat(window(gray, level, width)[..., None], 3, axis=-1).astype(np.float32)
    for mask, color in fills:
        sel = np.asarray(mask, bool)
        rgb[sel] = (1 - opacity) * rgb[sel] + opacity * np.asarray(color, dtype=np.float32)
    for mask, color in outlines:
        sel = np.asarray(mask, bool)
        inner = sel.copy()
        inner[1:, :] &= sel[:-1, :]
        inner[:-1, :] &= sel[1:, :]
        inner[:, 1:] &= sel[:, :-1]
        inner[:, :-1] &= sel[:, 1:]
        rgb[sel & ~inner] = np.asarray(color, dtype=np.float32)
    picture = Image.fromarray(rgb.astype(np.uint8))
    if size is None:
        return picture
    scale = size / max(gray.shape[0] * row_mm, gray.shape[1] * col_mm)
    shape = (max(1, round(gray.shape[1] * col_mm * scale)), max(1, round(gray.shape[0] * row_mm * scale)))
    return picture.resize(shape, Image.Resampling.NEAREST)
