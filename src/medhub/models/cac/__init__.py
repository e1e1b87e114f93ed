"""Coronary artery calcium scoring on non-gated chest CT (see README.md and card.yaml)."""

from medhub.models.cac.model import CAC

__all__ = ["CAC"]
