"""Reading photographs (JPEG, PNG): RGB pixels as the camera meant them, or one clear error.

Pixels are ``(H, W, 3)`` uint8 RGB with the EXIF orientation applied, so row 0 is the top of the picture as a
viewer shows it (x right, y down, origin top-left). Greyscale, palette and alpha images become RGB (alpha is
dropped, not composited). A file that is missing, is not a picture, or is cut short raises
:class:`~medhub.errors.InputError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medhub.errors import InputError

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


@dataclass(frozen=True)
class Photo:
    """One photograph: ``pixels`` ``(H, W, 3)`` uint8 RGB (EXIF orientation applied) and its file ``name``."""

    pixels: np.ndarray
    name: str = ""


def is_photo(path: str | Path) -> bool:
    """Whether ``path`` has a photo suffix (``.jpg``, ``.jpeg``, ``.png``, any case)."""
    return Path(path).suffix.lower() in PHOTO_SUFFIXES


def read_photo(path: str | Path) -> np.ndarray:
    """The RGB pixels of the JPEG or PNG at ``path``; see the module docstring."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", code="not-found")
    try:
        with Image.open(path) as image:
            image.load()  # decodes now, so a truncated file fails here and not later
            upright = ImageOps.exif_transpose(image)
            return np.asarray(upright.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError as e:
        raise InputError(path, "not a readable JPEG or PNG picture", code="unreadable") from e
    except OSError as e:  # Pillow reports a cut-short file as OSError("image file is truncated ...")
        text = str(e)
        if "truncated" in text or "broken data stream" in text or "end of file" in text.lower():
            raise InputError(path, "picture is truncated (the file ends before the image does)",
                             code="truncated") from e
        raise InputError(path, f"cannot decode the picture ({text.splitlines()[0] if text else type(e).__name__})",
                         code="unreadable") from e
    except (ValueError, SyntaxError) as e:  # damaged headers surface as these from some Pillow plugins
        raise InputError(path, f"damaged picture header ({e})", code="unreadable") from e


def find_photos(folder: str | Path) -> list[Path]:
    """Every photo under ``folder`` (following symbolic links, each real file once), in a deterministic order."""
    from medhub.io.tree import walk_files

    return sorted(p for p in walk_files(folder).files if is_photo(p))
