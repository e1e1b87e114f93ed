"""The contract every model meets.

A model is an object with a ``card`` (:class:`~medhub.hub.card.ModelCard`) and a ``predict`` method that returns a
:class:`Prediction`. It takes what the card declares: a :class:`~medhub.io.volume.Volume` for a model of one
volume (no ``inputs.sequences``), or, for a model of named sequences, a mapping from each sequence name found to
its volume, in the card's order and all on the first one's grid (the runner finds the sequences of a session and
refuses a session that lacks a required one), or a :class:`~medhub.io.photo.Photo` for a model of photographs
(``inputs.kind: photo``). Models never open files: the runner reads inputs and writes outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medhub.hub.card import ModelCard, load_card
from medhub.io.photo import Photo
from medhub.io.volume import Volume


@dataclass
class Table:
    """A per-case table (e.g. one row per lesion); ``columns`` fixes the header, also when there are no rows."""

    columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Prediction:
    """What a model returns for one case.

    Parameters
    ----------
    labels:
        Label map on the input grid, shape ``(slices, rows, columns)``, dtype uint8; values are the card's
        segment labels, 0 is background. ``None`` for models without segments.
    values:
        Scalar outputs by the card's value names, in the card's units (strings for categorical outputs).
    warnings:
        Things the user should know about this case (e.g. a reported gap); they go into the run record.
    extra:
        Model-specific details to keep in the JSON record (must be JSON-serialisable).
    tables:
        Per-case tables by name; the runner writes each as ``<name>.csv`` beside ``results.json``.
    images:
        Per-case pictures by name, ``(H, W, 3)`` uint8 RGB (e.g. the face crop, a saliency overlay); the runner
        writes each as ``<name>.png`` when PNG output is wanted.
    columns:
        Per-case details that are not coded outputs (e.g. the face box in pixels); they go into ``results.json``
        and as columns into ``results.csv``.
    """

    labels: np.ndarray | None = None
    values: dict[str, float | str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    columns: dict[str, float | str] = field(default_factory=dict)


#: What ``predict`` receives: one volume, the volumes of a session by sequence name, or a photo.
ModelInput = Volume | Mapping[str, Volume] | Photo


@runtime_checkable
class Model(Protocol):
    card: ModelCard

    def predict(self, volume: ModelInput) -> Prediction: ...


class FolderModel:
    """Base class for a model whose card (and weights, reference data) sit in one folder.

    Subclasses set ``folder`` to their directory (usually ``Path(__file__).parent``) and implement
    :meth:`predict`.
    """

    folder: Path

    def __init__(self) -> None:
        self.card = load_card(self.folder / "card.yaml")

    @property
    def weights_path(self) -> Path | None:
        return self.folder / self.card.weights.file if self.card.weights else None

    def predict(self, volume: ModelInput) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError
