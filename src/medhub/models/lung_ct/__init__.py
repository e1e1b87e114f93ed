"""``lung-ct``: classical right/left lung segmentation on CT (no trained weights)."""

from medhub.models.lung_ct.model import LungCT

__all__ = ["LungCT"]
