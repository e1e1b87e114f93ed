"""Face photos for training: labelled tables, the face-crop cache, tensors and augmentation.

One preprocessing policy at training and at inference: every photo goes through
:func:`medhub.face.detect.crop_face` with the model's :class:`~medhub.face.detect.CropPolicy` (or, with
``policy=None``, is taken as an already-cropped face and only resized), and :func:`to_tensor` normalizes it the
same way for the network. Pixels are RGB, ``(H, W, 3)`` uint8 in arrays, ``(N, 3, H, W)`` float in tensors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medhub.errors import InputError, MedhubError
from medhub.io.files import atomic_path

#: Tensor normalization of 8-bit pixels: ``(x / 255 - MEAN) / STD`` per channel.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25
IMAGE_COLUMNS = ("image", "file", "path", "filename")
CHUNK = 256


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` (or one ``(H, W, 3)``) uint8 crops as a normalized ``(N, 3, H, W)`` float32 tensor."""
    array = crops[None] if crops.ndim == 3 else crops
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - PIXEL_MEAN) / PIXEL_STD


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """An already-cropped face photo, centre-cropped to a square and resized to ``size`` pixels (area filter when
    shrinking, bicubic when enlarging). OpenCV's filters, unlike Pillow's, commute with a mirror image."""
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(image[top:top + side, left:left + side])
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC)


def network_view(image: np.ndarray, policy: Any | None, size: int, *, where: str | Path | None = None
                 ) -> tuple[np.ndarray, Any | None]:
    """The network's view of one photo (``(H, W, 3)`` uint8 RGB): the ``(size, size, 3)`` face crop and the
    :class:`~medhub.face.detect.FaceCrop` record (face box, angle, affine), or ``None`` as the record when
    ``policy`` is ``None`` (the photo is a face crop already and is only squared and resized).

    Raises :class:`~medhub.errors.InputError` naming ``where`` when no face is found.
    """
    if policy is None:
        return resize_square(image, size), None
    from medhub.face.detect import crop_face

    crop = crop_face(image, policy, where=where)
    return crop.image, crop


def photo_view(image: np.ndarray, policy: Any | None, size: int, view: str, *, where: str | Path | None = None
               ) -> np.ndarray:
    """What a model learns from in one photo: ``view`` ``"crop"``, the network's ``(size, size, 3)`` face crop
    (:func:`network_view`), or ``"descriptor"`` (``"mirrored-descriptor"``), the 128-number descriptor of the face
    (of its mirror image) from dlib's face-recognition network (:func:`medhub.face.descriptors.photo_descriptor`;
    ``size`` unused)."""
    if view in ("descriptor", "mirrored-descriptor"):
        from medhub.face.descriptors import photo_descriptor

        return photo_descriptor(image, policy, where=where, mirrored=view == "mirrored-descriptor")
    return network_view(image, policy, size, where=where)[0]


@dataclass
class CropCache:
    """Face crops (or another :func:`photo_view`) of many photos, computed once and kept as ``.npz`` chunks of
    :data:`CHUNK` photos.

    A chunk's file name is a hash of the view, the crop policy, the size and each photo's path, size and
    modification time, so a rerun loads what is done and computes only what changed. Photos that fail
    (unreadable, no face) are recorded with their reason and left out of ``crops``.
    """

    crops: np.ndarray  # (N, size, size, 3) uint8 crops, or (N, 128) float32 descriptors
    paths: list[Path]
    failures: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, paths: list[Path], cache: str | Path, *, policy: Any | None, size: int, view: str = "crop",
              progress: bool = True) -> CropCache:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from medhub.io.photo import read_photo

        cache = Path(cache)
        cache.mkdir(parents=True, exist_ok=True)
        setting = {"policy": None if policy is None else _policy_dict(policy), "size": size}
        if view != "crop":  # crop caches keep the names they had before descriptors existed
            setting["view"] = view
        setting = json.dumps(setting, sort_keys=True)
        empty = np.zeros((0, size, size, 3), np.uint8) if view == "crop" else np.zeros((0, 128), np.float32)
        crops: list[np.ndarray] = []
        kept: list[Path] = []
        failures: dict[str, str] = {}
        with Progress(TextColumn(f"[bold]face {view}s"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      disable=not progress, transient=True) as bar:
            task = bar.add_task("photos", total=len(paths))
            for start in range(0, len(paths), CHUNK):
                chunk = paths[start:start + CHUNK]
                digest = hashlib.sha256(setting.encode())
                for p in chunk:
                    stat = p.stat()
                    digest.update(f"{p.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
                target = cache / f"crops-{digest.hexdigest()[:24]}.npz"
                if not target.is_file():
                    arrays, names, failed = [], [], {}
                    for p in chunk:
                        try:
                            arrays.append(photo_view(read_photo(p), policy, size, view, where=p))
                            names.append(str(p))
                        except MedhubError as e:
                            failed[str(p)] = e.reason
                        bar.advance(task)
                    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                        np.savez(handle, crops=np.stack(arrays) if arrays else empty,
                                 paths=np.array(names, dtype=str), failures=json.dumps(failed))
                else:
                    bar.advance(task, len(chunk))
                with np.load(target) as data:
                    crops.append(data["crops"])
                    kept += [Path(p) for p in data["paths"]]
                    failures.update(json.loads(str(data["failures"])))
        stacked = np.concatenate(crops) if crops else empty
        return cls(stacked, kept, failures)


def _policy_dict(policy: Any) -> dict[str, Any]:
    from dataclasses import asdict

    # without a fallback detector a policy keys the crop cache as it did before fallbacks existed
    return {k: v for k, v in asdict(policy).items() if not (k == "fallback" and v is None)}


def read_labelled_table(table: str | Path, images: str | Path | None = None, *,
                        image_column: str | None = None) -> tuple[Any, list[Path]]:
    """A CSV of photos with their labels, and each row's photo path.

    The photo column is ``image_column`` or the first of :data:`IMAGE_COLUMNS` present; relative paths are taken
    from ``images`` (default: the table's folder, or its ``images/`` subfolder when the files are there). Rows whose
    photo does not exist are an error naming the first such file.
    """
    import pandas as pd

    table = Path(table)
    try:
        frame = pd.read_csv(table)
    except FileNotFoundError as e:
        raise InputError(table, "file not found", code="not-found") from e
    except Exception as e:  # pandas raises many kinds for a damaged table
        raise InputError(table, f"cannot read the table ({type(e).__name__})", code="unreadable") from e
    column = image_column or next((c for c in IMAGE_COLUMNS if c in frame.columns), None)
    if column is None or column not in frame.columns:
        raise InputError(table, f"no photo column (one of {', '.join(IMAGE_COLUMNS)}, or --image-column)",
                         code="bad-input")
    if images is None:
        first = Path(str(frame[column].iloc[0]))
        images = table.parent / "images" if (table.parent / "images" / first).is_file() else table.parent
    root = Path(images)
    paths = [p if p.is_absolute() else root / p for p in map(Path, frame[column].astype(str))]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(missing[0], f"photo not found ({len(missing)} of the table's {len(paths)} are missing)",
                         code="not-found")
    return frame, paths


def augment(x: torch.Tensor, generator: torch.Generator, *, strength: float = 1.0) -> torch.Tensor:
    """A random view of each normalized image in ``x`` ``(N, 3, H, W)``: scale 0.85–1.15, rotation ±10°, shift ±6 %,
    a horizontal flip half of the time, brightness, contrast and colour jitter, grey one time in ten. ``strength``
    scales every range (contrastive pretraining uses 2)."""
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = torch.deg2rad(uniform(-10, 10) * strength)
    scale = 1 + uniform(-0.15, 0.15) * strength
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = torch.stack([uniform(-0.06, 0.06), uniform(-0.06, 0.06)], 1) * strength
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / scale * flip
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * flip
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    brightness = uniform(-0.4, 0.4) * strength
    contrast = 1 + uniform(-0.3, 0.3) * strength
    colour = 1 + (torch.rand(n, 3, generator=generator) - 0.5) * 0.2 * strength
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.view(n, 1, 1, 1) + mean + brightness.view(n, 1, 1, 1)
    out = out * colour.view(n, 3, 1, 1)
    grey = torch.rand(n, generator=generator) < 0.1
    out[grey] = out[grey].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return out
