"""Face models on the hub: ``face-age`` and ``face-survival``, and any folder exported from a photo finetuning.

:class:`FacePhotoModel` runs a model folder (card + ``weights/checkpoint.safetensors`` + ``checkpoint.json``,
packaged by :func:`medhub.hub.export.package_model`) on one photo: the face is found and cropped with the crop
policy stored in the checkpoint (the same as in training), the ViT predicts on the crop and its mirror image, and
the prediction carries the value, the face box (pixels of the photo as read, EXIF orientation applied: x right,
y down, origin top-left), the crop picture and, when asked, a saliency overlay on the crop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from medhub.errors import InputError, ModelError
from medhub.hub.card import ModelCard
from medhub.hub.export import package_model, read_finetuned_sidecar
from medhub.hub.model import FolderModel, ModelInput, Prediction
from medhub.io.photo import Photo

#: Card outputs of each photo task.
FACE_OUTPUTS: dict[str, dict[str, Any]] = {
    "face-age": {"title": "Apparent age from a face photo", "task": "regression",
                 "values": [{"name": "face_age_years", "unit": "a",
                             "concept": {"value": "FACE-AGE", "scheme": "99MEDHUB",
                                         "meaning": "Age estimated from a face photograph"},
                             "description": "The age (years) the network reads from the face; not the recorded "
                                            "age."}]},
    "survival": {"title": "Mortality risk score from a face photo", "task": "survival",
                 "values": [{"name": "risk_score", "unit": "{risk}",
                             "concept": {"value": "FACE-RISK", "scheme": "99MEDHUB",
                                         "meaning": "Log hazard ratio estimated from a face photograph"},
                             "description": "Cox log hazard ratio relative to the training cohort (higher = "
                                            "worse)."}]},
}


#: A face-age reading under the youngest age of its adults-only stage 2 plus this margin (years) gets a warning.
YOUNG_MARGIN_YEARS = 5.0


def crop_policy_from(record: Mapping[str, Any] | None) -> Any | None:
    """The :class:`~medhub.face.detect.CropPolicy` a checkpoint stored (``None``: photos are crops already)."""
    if record is None:
        return None
    from medhub.face.detect import CropPolicy

    names = {f.name for f in fields(CropPolicy)}
    return CropPolicy(**{k: v for k, v in record.items() if k in names})


class FacePhotoModel(FolderModel):
    """A finetuned face ViT in a model folder (see the module docstring).

    ``saliency`` (``None``, ``"integrated-gradients"`` or ``"grad-cam"``) adds a ``saliency`` picture: the map of
    the network's output on the crop (not mirror-averaged), blended onto the crop.
    """

    saliency: str | None = None

    def __init__(self, folder: str | Path | None = None) -> None:
        if folder is not None:
            self.folder = Path(folder)
        super().__init__()
        self._network: Any = None
        self._head: Any = None

    def network(self) -> tuple[Any, dict[str, Any]]:
        """The finetuned network and its sidecar (loaded once)."""
        if self._network is None:
            from medhub.face.finetuning import load_face_net

            self._network = load_face_net(self.folder / "weights")
        return self._network

    def descriptor_head(self, sidecar: dict[str, Any]) -> Any | None:
        """The model's age head on face-recognition descriptors, when it has one (loaded once)."""
        record = sidecar.get("descriptor_head")
        if record is not None and self._head is None:
            from medhub.face.descriptors import descriptor_record, load_descriptor_head

            installed = descriptor_record()
            if installed["sha256"] != record["descriptor"]["sha256"]:
                raise ModelError(self.card.id, f"its descriptor head was trained on {record['descriptor']['model']} "
                                               f"sha256 {record['descriptor']['sha256'][:12]}…, but "
                                               f"{installed['package']} holds {installed['sha256'][:12]}…",
                                 code="weights-mismatch")
            self._head = load_descriptor_head(self.folder / "weights", record)
        return self._head

    def predict(self, photo: ModelInput) -> Prediction:
        import numpy as np
        import torch

        from medhub.face.data import network_view
        from medhub.face.finetuning import AGE_SCALE, predict_crops

        if not isinstance(photo, Photo):
            raise ModelError(self.card.id, "needs a photo (JPEG or PNG)", code="bad-input")
        net, sidecar = self.network()
        size = int(sidecar["network"]["image_size"])
        policy = crop_policy_from(sidecar.get("crop_policy"))
        crop, record = network_view(photo.pixels, policy, size, where=photo.name or None)
        torch.manual_seed(0)
        value = float(predict_crops(net, crop[None])[0])
        columns: dict[str, float | str] = {"photo_width": photo.pixels.shape[1], "photo_height": photo.pixels.shape[0]}
        head = self.descriptor_head(sidecar)
        if head is not None:
            from medhub.face.descriptors import face_descriptor

            box = record.box if record is not None else None
            descriptors = np.stack([face_descriptor(photo.pixels, box, mirrored=m) for m in (False, True)])
            with torch.no_grad():
                read = float(head(torch.from_numpy(descriptors)).mean())
            share = float(sidecar["descriptor_head"]["share"])
            columns.update({"age_from_crop_networks": round(value * AGE_SCALE, 2),
                            "age_from_descriptor_head": round(read * AGE_SCALE, 2)})
            value = (1 - share) * value + share * read
        name = self.card.outputs.values[0].name
        values = {name: round(value * AGE_SCALE, 2) if sidecar["task"] == "face-age" else round(value, 4)}
        if record is not None:
            box = record.box
            columns.update({"face_x0": round(box.x0, 1), "face_y0": round(box.y0, 1), "face_x1": round(box.x1, 1),
                            "face_y1": round(box.y1, 1), "face_score": round(float(box.score), 3),
                            "faces_found": record.faces_found, "rotation_deg": round(record.angle, 2),
                            "face_detector": record.detector})
        images = {"crop": crop}
        if self.saliency:
            from medhub.face.saliency import overlay, saliency_map

            images["saliency"] = overlay(crop, saliency_map(net, crop, self.saliency))
            columns["saliency"] = self.saliency
        extra = {"crop": record.to_dict() if record is not None else {"cropped": "as given"}, "crop_size": size}
        warnings = [f"{record.faces_found} faces found; the {policy.choose} one was used"] \
            if record is not None and record.faces_found > 1 else []
        if record is not None and record.detector != policy.detector:
            warnings.append(f"{policy.detector} found no face; {record.detector}'s box was used, reframed as "
                            f"{policy.detector}'s")
        adults_from = float(sidecar.get("finetune", {}).get("balance_min_age", 0.0))
        if sidecar["task"] == "face-age" and adults_from and values[name] < adults_from + YOUNG_MARGIN_YEARS:
            warnings.append(f"read as {values[name]:.0f}: this network's last stage learnt from adults of "
                            f"{adults_from:g}+ only, so a younger face is read too old")
        return Prediction(values=values, columns=columns, images=images, extra=extra, warnings=warnings)


def describe_networks(sidecar: Mapping[str, Any]) -> str:
    """The network of a photo run in words, or "the mean of N copies of ..." for an ensemble's sidecar, and its
    descriptor head with its share when it has one."""
    from medhub.learn.vit2d import ViT2DConfig

    backbone = ViT2DConfig.from_dict(sidecar["network"]).describe()
    members = len(sidecar.get("members") or ())
    words = backbone if members <= 1 else f"the mean of {members} copies of {backbone}"
    head = sidecar.get("descriptor_head")
    if head:
        words = (f"{words} (weight {1 - head['share']:g}) and an MLP head (weight {head['share']:g}) on the "
                 f"face descriptor of dlib's face-recognition ResNet ({head['descriptor']['model']}, frozen)")
    return words


def export_face_model(finetuned: str | Path, output: str | Path, *, model_id: str, version: str = "0.1.0",
                      name: str | None = None, trained_on: str | None = None, card: Mapping[str, Any] | None = None,
                      license: str = "Apache-2.0", fallback_detector: str | None = None) -> ModelCard:
    """A photo finetuning run (``medhub finetune --task face-age|survival``) as a hub model folder; ``card``
    overrides any card field; ``fallback_detector`` is tried at inference when the training detector finds no
    face (:class:`~medhub.face.detect.CropPolicy`'s ``fallback``). Returns the card."""
    sidecar = read_finetuned_sidecar(finetuned)
    if sidecar.get("head"):
        raise InputError(finetuned, "a descriptor head: export it together with the crop network run(s) it goes "
                                    "with", code="bad-input")
    task = sidecar["task"]
    template = FACE_OUTPUTS[task]
    network = sidecar["network"]
    backbone = describe_networks(sidecar)
    pretrained = sidecar.get("pretrained")
    origin = (f"finetuned from a {pretrained.get('arch')} {pretrained.get('objective')} pretraining checkpoint"
              if pretrained else "trained from random weights")
    data = sidecar.get("data", {})
    trained_on = trained_on or f"{data.get('train')} photos of {data.get('table')}"
    evaluation = sidecar.get("evaluation")
    body: dict[str, Any] = {
        "id": model_id, "name": name or model_id, "version": version, "title": template["title"],
        "description": f"{backbone[0].upper()}{backbone[1:]} ({origin}) on the face "
                       f"cropped as in training ({network['image_size']} px).",
        "task": template["task"],
        "inputs": {"modality": "XC", "kind": "photo", "body_part": "FACE", "min_slices": 1},
        "outputs": {"segments": [], "values": template["values"]},
        "training_data": trained_on,
        "evaluation": f"Held out: {json.dumps(evaluation)}" if evaluation else "",
        "intended_use": "Research on face photographs. Not for clinical use.",
        "limitations": "See training_data.",
        "license": license, "authors": ["medhub contributors"],
        "resources": {"device": "cpu-or-gpu", "memory_gib": 2.0},
        **dict(card or {}),
    }
    overrides = {}
    if fallback_detector:
        from medhub.face.detect import BOX_FRAMING

        policy = sidecar.get("crop_policy")
        if policy is None or (fallback_detector, policy["detector"]) not in BOX_FRAMING:
            raise InputError(finetuned, f"no framing of {fallback_detector}'s boxes as "
                                        f"{policy['detector'] if policy else 'given crops'}' is known",
                             code="bad-option")
        overrides["crop_policy"] = {**policy, "fallback": fallback_detector}
    return package_model(finetuned, output, body, trained_on=trained_on, license=license,
                         sidecar_overrides=overrides)
