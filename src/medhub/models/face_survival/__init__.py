"""``face-survival``: a face-photo risk score. Ships without weights and refuses to run (see README.md)."""

from pathlib import Path

from medhub.face.hub import FacePhotoModel


class FaceSurvival(FacePhotoModel):
    """The face ViT with a Cox head; train it with ``medhub finetune --task survival`` on a cohort."""

    folder = Path(__file__).parent


__all__ = ["FaceSurvival"]
