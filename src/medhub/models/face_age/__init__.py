"""``face-age``: apparent age in years from a face photo (a ViT trained on the real UTKFace crops)."""

from pathlib import Path

from medhub.face.hub import FacePhotoModel


class FaceAge(FacePhotoModel):
    """A finetuned face ViT exported by ``medhub export-model``; README.md beside this file tells its story."""

    folder = Path(__file__).parent


__all__ = ["FaceAge"]
