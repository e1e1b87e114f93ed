"""Finding and cropping the face in a photo, with detectors whose models ship inside their PyPI wheels.

Nothing downloads at run time: each detector's model file is part of an installed package.

* ``opencv-haar`` (default): OpenCV's frontal-face Haar cascade (Viola–Jones), shipped in ``opencv-python-headless``
  under ``cv2.data.haarcascades``; OpenCV's eye cascade gives the eye centres for alignment.
* ``skimage-lbp``: scikit-image's bundled LBP frontal-face cascade (``skimage.data.lbp_frontal_face_cascade_filename``).
* ``dlib-hog``: dlib's HOG + linear SVM frontal-face detector, built into the ``dlib-bin`` wheel (a core
  dependency since face-age's descriptor head, :mod:`medhub.face.descriptors`, needs dlib).

``benchmarks/face_detectors.py`` compares them on the real UTKFace crops; the figures are in
``benchmarks/RESULTS.md``.

Coordinates are pixels of the photo as read by :func:`medhub.io.photo.read_photo` (EXIF orientation applied):
x to the right, y down, origin at the top-left corner of the top-left pixel. A photo that is already a tight face
chip leaves a detector no context around the face, so detection runs on the photo with a replicated border of
``pad`` × its longer side on every side; boxes are mapped back to the photo (and may reach outside it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medhub.errors import InputError

#: Longest side (pixels) a photo is shrunk to for detection.
DETECT_SIDE = 1024


class NoFaceError(InputError):
    """No face was found in a photo (a per-image failure: a folder run records it and goes on)."""

    default_code = "no-face"


@dataclass(frozen=True)
class FaceBox:
    """A detected face: the box ``[x0, x1) × [y0, y1)`` in photo pixels, the detector's ``score`` (larger is more
    certain; its scale depends on the detector) and, when found, the ``eyes`` ``((x, y) left in the picture,
    (x, y) right in the picture)``."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 0.0
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: round(float(getattr(self, k)), 2) for k in ("x0", "y0", "x1", "y1", "score")}
        if self.eyes is not None:
            out["eyes"] = [[round(float(v), 2) for v in eye] for eye in self.eyes]
        return out


def iou(a: FaceBox, b: FaceBox) -> float:
    """Intersection over union of two boxes."""
    w = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    h = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = w * h
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


# --- detectors: each takes a grey (H, W) uint8 picture and gives (x, y, w, h, score) rows ---

@cache
def _haar(name: str) -> Any:
    import cv2

    path = Path(cv2.data.haarcascades) / name
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():  # a wheel without its cascades (OpenCV 5 wheels ship none)
        raise RuntimeError(f"OpenCV cascade {path} is missing; install opencv-python-headless<5")
    return cascade


def _opencv_haar(grey: np.ndarray, min_size: int) -> list[tuple[float, ...]]:
    boxes, _, weights = _haar("haarcascade_frontalface_default.xml").detectMultiScale3(
        grey, scaleFactor=1.1, minNeighbors=4, minSize=(min_size, min_size), outputRejectLevels=True)
    return [(*map(float, b), float(w)) for b, w in zip(boxes, np.ravel(weights), strict=True)]


@cache
def _lbp() -> Any:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def _skimage_lbp(grey: np.ndarray, min_size: int) -> list[tuple[float, ...]]:
    found = _lbp().detect_multi_scale(grey, scale_factor=1.2, step_ratio=1, min_size=(min_size, min_size),
                                      max_size=(grey.shape[0], grey.shape[1]), min_neighbor_number=2)
    # skimage gives no score; the merged box's size stands in (larger first, like "largest").
    return [(float(d["c"]), float(d["r"]), float(d["width"]), float(d["height"]), float(d["width"]))
            for d in found]


@cache
def _dlib() -> Any:
    import dlib

    return dlib.get_frontal_face_detector()


def _dlib_hog(grey: np.ndarray, min_size: int) -> list[tuple[float, ...]]:
    rects, scores, _ = _dlib().run(grey, 1 if min(grey.shape) < 400 else 0, 0.0)
    return [(float(r.left()), float(r.top()), float(r.width()), float(r.height()), float(s))
            for r, s in zip(rects, scores, strict=True) if r.width() >= min_size]


DETECTORS: dict[str, Callable[[np.ndarray, int], list[tuple[float, ...]]]] = {
    "opencv-haar": _opencv_haar,
    "skimage-lbp": _skimage_lbp,
    "dlib-hog": _dlib_hog,
}


def available_detectors() -> list[str]:
    """The detectors whose package is installed here."""
    import importlib.util

    needs = {"opencv-haar": "cv2", "skimage-lbp": "skimage", "dlib-hog": "dlib"}
    return [name for name in DETECTORS if importlib.util.find_spec(needs[name]) is not None]


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    rgb = image[..., :3].astype(np.float32)
    return np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255).astype(np.uint8)


def _find_eyes(grey: np.ndarray, box: FaceBox) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The two eye centres inside the upper part of ``box`` (OpenCV's eye cascade), left then right in the
    picture; ``None`` unless exactly one eye is found on each side of the box's centre line."""
    top, bottom = int(max(0, box.y0 + 0.15 * box.height)), int(max(0, box.y0 + 0.55 * box.height))
    left, right = int(max(0, box.x0)), int(max(0, box.x1))
    region = grey[top:bottom, left:right]
    if region.size == 0 or min(region.shape) < 20:
        return None
    side = max(8, int(box.width * 0.12))
    found = _haar("haarcascade_eye.xml").detectMultiScale(region, scaleFactor=1.1, minNeighbors=5,
                                                          minSize=(side, side), maxSize=(3 * side, 3 * side))
    centres = [(left + x + w / 2, top + y + h / 2) for x, y, w, h in found]
    middle = box.center[0]
    lefts = [c for c in centres if c[0] < middle]
    rights = [c for c in centres if c[0] >= middle]
    if len(lefts) != 1 or len(rights) != 1:
        return None
    return lefts[0], rights[0]


def detect_faces(image: np.ndarray, detector: str = "opencv-haar", *, pad: float = 0.25, eyes: bool = True,
                 min_face: float = 0.1) -> list[FaceBox]:
    """Every face a detector finds in ``image`` (``(H, W, 3)`` RGB or ``(H, W)`` grey uint8), most certain first.

    ``pad`` adds a replicated border (fraction of the longer side) so that a face filling the whole picture is
    found; ``min_face`` is the smallest face side, as a fraction of the shorter side, worth reporting; ``eyes``
    looks for the eye centres in each box (for alignment).
    """
    import cv2

    if detector not in DETECTORS:
        raise ValueError(f"unknown face detector {detector!r}; choose from {', '.join(DETECTORS)}")
    grey = _grey(image)
    # Cascades scan every scale; a phone photo is shrunk to DETECT_SIDE first, and boxes scaled back.
    shrink = min(1.0, DETECT_SIDE / max(grey.shape))
    if shrink < 1:
        grey = cv2.resize(grey, (round(grey.shape[1] * shrink), round(grey.shape[0] * shrink)),
                          interpolation=cv2.INTER_AREA)
    border = round(pad * max(grey.shape))
    padded = cv2.copyMakeBorder(grey, border, border, border, border, cv2.BORDER_REPLICATE) if border else grey
    min_size = max(16, int(min_face * min(grey.shape)))
    rows = DETECTORS[detector](padded, min_size)
    boxes = [FaceBox(x - border, y - border, x - border + w, y - border + h, score) for x, y, w, h, score in rows]
    boxes.sort(key=lambda b: (-b.score, -b.area))
    if eyes:
        boxes = [FaceBox(b.x0, b.y0, b.x1, b.y1, b.score, _find_eyes(padded, _shift(b, border)))
                 for b in boxes]
    return [_unshrink(b, border, shrink) for b in boxes]


def _unshrink(box: FaceBox, border: float, shrink: float) -> FaceBox:
    """``box`` (with eyes in padded, shrunk pixels) in the photo's pixels."""
    eyes = None if box.eyes is None else tuple(((x - border) / shrink, (y - border) / shrink) for x, y in box.eyes)
    return FaceBox(box.x0 / shrink, box.y0 / shrink, box.x1 / shrink, box.y1 / shrink, box.score,
                   eyes)  # type: ignore[arg-type]


def _shift(box: FaceBox, by: float) -> FaceBox:
    return FaceBox(box.x0 + by, box.y0 + by, box.x1 + by, box.y1 + by, box.score)


@dataclass(frozen=True)
class CropPolicy:
    """How a face photo becomes the network's input.

    Attributes
    ----------
    size:
        Side of the square crop in pixels (FaceAge uses 160; 224 for ImageNet-style ViTs).
    margin:
        Extra context on every side, as a fraction of the detected box's longer side.
    choose:
        ``"largest"`` face, or ``"first"``: the detector's most certain one (FaceAge's MTCNN takes the first).
    align:
        Rotate so that the eyes are level, when both eyes are found (at most ±30°).
    detector:
        One of :data:`DETECTORS`.
    fallback:
        Another of :data:`DETECTORS`, tried only when ``detector`` finds no face; its box is mapped into
        ``detector``'s framing (:data:`BOX_FRAMING`), so that the crop frames the face as the network learnt it.
    """

    size: int = 160
    margin: float = 0.1
    choose: Literal["largest", "first"] = "first"
    align: bool = True
    detector: str = "opencv-haar"
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FaceCrop:
    """A face cut out of a photo: the ``(size, size, 3)`` uint8 ``image``, the chosen ``box``, the rotation
    ``angle`` (degrees, counter-clockwise in the picture, applied to level the eyes), how many faces were found,
    and the 2 × 3 ``affine`` that maps photo pixels (x, y, 1) to crop pixels."""

    image: np.ndarray
    box: FaceBox
    angle: float
    faces_found: int
    affine: np.ndarray = field(repr=False)
    detector: str = "opencv-haar"

    def to_dict(self) -> dict[str, Any]:
        return {"box": self.box.to_dict(), "angle_deg": round(self.angle, 2), "faces_found": self.faces_found,
                "detector": self.detector}


#: A fallback detector's box in the framing of the detector it stands in for: ``(dx, dy, sx, sy)``, where the
#: mapped box's centre moves by ``(dx × width, dy × height)`` and its sides scale by ``(sx, sy)``. Medians over the
#: UTKFace chips where both detectors find the face (``python benchmarks/face_fallback.py``: 1,693 chips, SD
#: 0.02-0.09).
BOX_FRAMING: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("dlib-hog", "opencv-haar"): (0.0, -0.083, 1.118, 1.124),
}


def reframe(box: FaceBox, fallback: str, detector: str) -> FaceBox:
    """``box`` from the ``fallback`` detector, mapped into ``detector``'s framing (:data:`BOX_FRAMING`)."""
    dx, dy, sx, sy = BOX_FRAMING[(fallback, detector)]
    cx, cy = box.center[0] + dx * box.width, box.center[1] + dy * box.height
    w, h = sx * box.width / 2, sy * box.height / 2
    return FaceBox(cx - w, cy - h, cx + w, cy + h, box.score, box.eyes)


def choose_face(image: np.ndarray, policy: CropPolicy, *, where: str | Path | None = None
                ) -> tuple[FaceBox, int, str]:
    """The face ``policy`` picks in ``image``, how many faces were found and by which detector (the policy's, or
    its fallback when that one finds none); raises :class:`NoFaceError` naming ``where`` when neither finds one."""
    detector = policy.detector
    faces = detect_faces(image, detector, eyes=policy.align)
    if not faces and policy.fallback:
        detector = policy.fallback
        faces = [reframe(b, detector, policy.detector) for b in detect_faces(image, detector, eyes=policy.align)]
    if not faces:
        tried = policy.detector + (f" or {policy.fallback}" if policy.fallback else "")
        raise NoFaceError(where, f"no face found (detector {tried})")
    return (max(faces, key=lambda b: b.area) if policy.choose == "largest" else faces[0]), len(faces), detector


def crop_face(image: np.ndarray, policy: CropPolicy | None = None, *, where: str | Path | None = None) -> FaceCrop:
    """The face of ``image`` (``(H, W, 3)`` uint8 RGB) cropped by ``policy``; raises :class:`NoFaceError` naming
    ``where`` when the detector finds none.

    The crop is the square of side ``(1 + 2 × margin) ×`` the box's longer side around the box centre (the eye
    midpoint's level when aligned), rotated to level the eyes; parts outside the photo repeat its edge pixels.
    """
    import cv2

    policy = policy or CropPolicy()
    box, found, detector = choose_face(image, policy, where=where)
    angle = 0.0
    if policy.align and box.eyes is not None:
        (lx, ly), (rx, ry) = box.eyes
        tilt = math.degrees(math.atan2(ry - ly, rx - lx))
        angle = tilt if abs(tilt) <= 30 else 0.0
    side = max(box.width, box.height) * (1 + 2 * policy.margin)
    cx, cy = box.center
    scale = policy.size / side
    source = np.ascontiguousarray(image[..., :3])
    if scale < 0.5:  # warpAffine samples without an anti-alias filter: shrink with an area filter first
        factor = 2 * scale
        source = cv2.resize(source, (max(1, round(source.shape[1] * factor)), max(1, round(source.shape[0] * factor))),
                            interpolation=cv2.INTER_AREA)
        cx, cy, scale = cx * factor, cy * factor, 0.5
    # Rotate by the eye tilt about the box centre, scale to the crop and put the centre in the crop's middle.
    rotation = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    rotation[:, 2] += (policy.size / 2 - cx, policy.size / 2 - cy)
    pixels = cv2.warpAffine(source, rotation, (policy.size, policy.size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    affine = rotation.copy()
    if source.shape[:2] != image.shape[:2]:  # the map from photo pixels, not from the shrunk copy
        affine[:, :2] *= source.shape[1] / image.shape[1]
    return FaceCrop(pixels, box, angle, found, affine, detector)
