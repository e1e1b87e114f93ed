"""Face descriptors from a face-recognition network, and the age head that reads them.

FaceAge did not learn faces from its age labels alone: it started from a face-recognition network (FaceNet) that
had seen millions of faces. The descriptor path does the same with the one such network whose weights ship inside
a PyPI package: dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``, 29 convolutional layers,
trained by Davis King on about 3 million faces of about 7,500 identities; released under CC0 in the
``face_recognition_models`` package, which also holds the 5-point landmark model used to align the face). Nothing
downloads at run time.

* :func:`photo_descriptor`: the face the crop policy picks (the same box as the network's crop; the whole photo
  when the photos are face crops already), its 5 landmarks, dlib's aligned 150-px chip (padding 0.25) and the
  network's 128-number descriptor (dlib's frozen weights, never trained here).
* :class:`DescriptorHead`: a small MLP from the descriptor to age / 100, trained by :func:`finetune_descriptor_head`
  with the one training loop (:class:`~medhub.learn.trainer.Trainer`), L1 loss, drawing the photos as face-age's
  stage 2 does (age-balanced, ``balance_min_age`` and older), on the same held-out split as the crop networks.
  It reads the face and its mirror image (the same box, mirrored) and averages the two, as the crop networks do.

A face-age model may average its crop networks with such a head (:func:`medhub.face.finetuning.combine_face_runs`);
saliency maps then explain the crop networks only.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medhub.errors import InputError, ModelError

DESCRIPTOR_SIZE = 128
#: dlib's aligned face chip: side (pixels) and padding round the landmarks, as its face-recognition network expects.
CHIP_SIZE = 150
CHIP_PADDING = 0.25
LANDMARK_MODEL = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
HEAD_WEIGHTS = "descriptor-head.safetensors"


def model_files() -> dict[str, Path]:
    """The landmark and descriptor model files inside the installed ``face_recognition_models`` package (found
    without importing it: its ``__init__`` needs the retired ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("face-descriptor", "the face_recognition_models package is not installed "
                                            "(pip install face_recognition_models)", code="missing-dependency")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return {"landmarks": folder / LANDMARK_MODEL, "descriptor": folder / DESCRIPTOR_MODEL}


@cache
def _dlib_models() -> tuple[Any, Any]:
    import dlib

    files = model_files()
    return dlib.shape_predictor(str(files["landmarks"])), dlib.face_recognition_model_v1(str(files["descriptor"]))


@cache
def descriptor_record() -> dict[str, Any]:
    """Which descriptor network a head was trained on: file name, sha256 and package version (for provenance)."""
    from importlib.metadata import version

    path = model_files()["descriptor"]
    return {"model": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "package": f"face_recognition_models {version('face_recognition_models')}",
            "chip": {"size": CHIP_SIZE, "padding": CHIP_PADDING}}


def face_descriptor(image: np.ndarray, box: Any | None = None, *, mirrored: bool = False) -> np.ndarray:
    """The 128-number descriptor (float32) of the face in ``box`` (a
    :class:`~medhub.face.detect.FaceBox` in photo pixels) of ``image`` (``(H, W, 3)`` uint8 RGB); ``box=None``
    takes the whole photo as the face. ``mirrored``: of the photo's mirror image (the box mirrored with it)."""
    import dlib

    landmarks, network = _dlib_models()
    pixels = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    h, w = pixels.shape[:2]
    # box edges in the FaceBox convention (pixel edges, x right); the whole photo is [0, w) × [0, h)
    x0, y0, x1, y1 = (0, 0, w, h) if box is None else (box.x0, box.y0, box.x1, box.y1)
    if mirrored:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
        x0, x1 = w - x1, w - x0
    shape = landmarks(pixels, dlib.rectangle(round(x0), round(y0), round(x1), round(y1)))
    chip = dlib.get_face_chip(pixels, shape, CHIP_SIZE, CHIP_PADDING)
    return np.asarray(network.compute_face_descriptor(chip), dtype=np.float32)


def photo_descriptor(image: np.ndarray, policy: Any | None, *, where: str | Path | None = None,
                     mirrored: bool = False) -> np.ndarray:
    """The descriptor of the face ``policy`` (a :class:`~medhub.face.detect.CropPolicy`) picks in ``image``, or of
    the whole photo with ``policy=None`` (face crops already); ``mirrored``: of its mirror image. Raises
    :class:`~medhub.face.detect.NoFaceError` naming ``where`` when no face is found."""
    if policy is None:
        return face_descriptor(image, mirrored=mirrored)
    from medhub.face.detect import choose_face

    return face_descriptor(image, choose_face(image, policy, where=where)[0], mirrored=mirrored)


class DescriptorHead(nn.Module):
    """Descriptor ``(N, 128)`` → one output per face ``(N,)``: two GELU layers of ``hidden`` units, dropout."""

    def __init__(self, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(DESCRIPTOR_SIZE, hidden), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)[:, 0]


def finetune_descriptor_head(table: str | Path, output: str | Path, *, config: Any | None = None,
                             hidden: int = 256, images: str | Path | None = None, image_column: str | None = None,
                             age_column: str = "age", report_by: tuple[str, ...] = (), crop_policy: Any = "default",
                             cache: str | Path | None = None, resume: bool = False, progress: bool = True
                             ) -> dict[str, Any]:
    """Train a :class:`DescriptorHead` for face-age on ``table`` into ``output`` (checkpoint, sidecar,
    ``evaluation.json``, ``evaluation.csv``, like :func:`~medhub.face.finetuning.finetune_photos`); return the
    sidecar with the held-out evaluation.

    ``config`` (a :class:`~medhub.face.finetuning.PhotoFinetuneConfig`) gives ``steps``, ``lr``, ``batch_size``,
    the balancing (``balance_bin``, ``balance_power``, ``balance_min_age``: drawn as stage 2 of the crop networks),
    ``holdout``, ``dropout`` and ``seed``. The photos, their detection and the held-out split are those of a crop
    network finetuned on the same table with the same ``holdout`` and ``seed``, so the two can be combined.
    """
    from medhub.face.data import CropCache, read_labelled_table
    from medhub.face.detect import CropPolicy
    from medhub.face.finetuning import (
        AGE_SCALE,
        PhotoFinetuneConfig,
        age_balancing_weights,
        decade_strata,
        evaluate_age,
        record_evaluation,
        split_holdout,
    )
    from medhub.learn.trainer import Trainer, TrainingConfig

    config = config or PhotoFinetuneConfig(steps=3000, lr=1e-3, balance_min_age=20.0)
    output = Path(output)
    frame, paths = read_labelled_table(table, images, image_column=image_column)
    missing = [c for c in (age_column, *report_by) if c not in frame.columns]
    if missing:
        raise InputError(table, f"column(s) {', '.join(missing)} not in the table", code="bad-input")
    policy = CropPolicy() if crop_policy == "default" else crop_policy
    found = CropCache.build(paths, cache or output / "cache", policy=policy, size=0, view="descriptor",
                            progress=progress)
    row_of = {str(p): i for i, p in enumerate(paths)}
    frame = frame.iloc[[row_of[str(p)] for p in found.paths]].reset_index(drop=True)
    ages = frame[age_column].to_numpy(np.float64)
    train, holdout = split_holdout(decade_strata(ages), config.holdout, config.seed)
    weights = age_balancing_weights(ages[train], config.balance_bin, config.balance_power, config.balance_min_age)
    if len(holdout) < 2 or not weights.any():
        raise InputError(table, f"{len(train)} training photos, none {config.balance_min_age:g} years or older, "
                                f"or too few to hold out", code="bad-input")
    descriptors = torch.from_numpy(found.crops.astype(np.float32))
    targets = torch.from_numpy((ages / AGE_SCALE).astype(np.float32))
    probability = weights / weights.sum()

    def batch_at(step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([config.seed, step])
        rows = train[rng.choice(len(train), config.batch_size, p=probability)]
        noise = torch.from_numpy(rng.normal(0, 0.01, (len(rows), DESCRIPTOR_SIZE)).astype(np.float32))
        return {"x": descriptors[rows] + noise, "age": targets[rows]}

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": nn.functional.l1_loss(model(batch["x"]), batch["age"])}

    torch.manual_seed(config.seed)
    head = DescriptorHead(hidden, config.dropout)
    metadata = {"kind": "medhub-finetuning", "modality": "photo", "task": "face-age",
                "head": {"kind": "descriptor", "hidden": hidden, "descriptor": descriptor_record()},
                "finetune": asdict(config), "crop_policy": None if policy is None else asdict(policy),
                "targets": {"age": age_column},
                "data": {"table": str(Path(table).resolve()), "photos": len(paths), "used": len(frame),
                         "no_face_or_unreadable": len(found.failures), "train": len(train),
                         "holdout": len(holdout)}}
    training = TrainingConfig(steps=config.steps, lr=config.lr, min_lr=config.lr / 50,
                              warmup_steps=min(config.warmup_steps, config.steps // 10),
                              weight_decay=1e-4, checkpoint_every=config.steps, seed=config.seed)
    history = Trainer(head, step, output, config=training, metadata=metadata, progress=progress).fit(
        batch_at, resume=resume)
    # Read as the model reads a photo: the mean over the face and its mirror image.
    mirrored = CropCache.build([found.paths[i] for i in holdout], cache or output / "cache", policy=policy, size=0,
                               view="mirrored-descriptor", progress=progress)
    head.eval()
    with torch.no_grad():
        predicted = (head(descriptors[holdout]) + head(torch.from_numpy(mirrored.crops))).numpy() / 2 * AGE_SCALE
    held = frame.iloc[holdout]
    evaluation = evaluate_age(ages[holdout], predicted, {c: held[c].to_numpy() for c in report_by},
                              seed=config.seed)
    rows = [{"image": str(path), "age": float(age), "predicted_age": float(value), "abs_error": float(abs(value - age))}
            for path, age, value in zip(np.array(found.paths, dtype=object)[holdout], ages[holdout], predicted,
                                        strict=True)]
    return record_evaluation(output, rows, evaluation, metadata, found.failures, history)


def load_descriptor_head(folder: str | Path, record: dict[str, Any]) -> DescriptorHead:
    """The head that ``record`` (a sidecar's ``descriptor_head``) names in ``folder``, in eval mode."""
    from safetensors.torch import load_file

    from medhub.learn.checkpoints import dequantize

    head = DescriptorHead(int(record["hidden"]), float(record.get("dropout", 0.1)))
    head.load_state_dict(dequantize(load_file(str(Path(folder) / record["weights"]))))
    return head.eval()
