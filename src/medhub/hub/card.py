"""The model card: everything medhub knows about a model, as one validated pydantic object.

A card lives as ``card.yaml`` in the model's folder. It covers the fields of MHub.ai's ``meta.json``
(identity, task, inputs, outputs, training data, evaluation, citations, license, intended use) and adds
what medhub enforces at run time: input constraints (modality, spacing range in mm, required sequences),
coded outputs (SNOMED CT / DCM), weights with sha256, and the reference data used by ``medhub verify``.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medhub.errors import ModelError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(Strict):
    """A coded concept, e.g. ``Code(value="39607008", scheme="SCT", meaning="Lung")``."""

    value: str
    scheme: Literal["SCT", "DCM", "UCUM", "SRT", "99MEDHUB"]
    meaning: str


class TaskType(StrEnum):
    segmentation = "segmentation"
    classification = "classification"
    regression = "regression"
    feature_extraction = "feature-extraction"
    survival = "survival"


class SpacingRange(Strict):
    """Allowed voxel spacing in mm, per axis (slice spacing is checked with ``slice_*``)."""

    in_plane_min: float = Field(0.1, gt=0)
    in_plane_max: float = Field(10.0, gt=0)
    slice_min: float = Field(0.1, gt=0)
    slice_max: float = Field(10.0, gt=0)


class SequenceSpec(Strict):
    """One named input of a multi-sequence model (e.g. ``flair``), and how the runner finds it in a session.

    In a NIfTI session folder it is the file named ``<name>.nii.gz`` (FOMO60K's naming); among the DICOM series of
    a study, the first series whose SeriesDescription matches one of ``series_description`` (regular expressions,
    case-insensitive; by default the name itself).
    """

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    required: bool = True
    series_description: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: object) -> object:
        return {"name": data} if isinstance(data, str) else data

    def matches(self, description: str) -> bool:
        import re

        rules = self.series_description or [re.escape(self.name)]
        return any(re.search(rule, description, flags=re.IGNORECASE) for rule in rules)


class InputSpec(Strict):
    """What a model accepts. The runner refuses any case that does not match, with the reason."""

    modality: Literal["CT", "MR", "PT", "CR", "DX", "XC", "OT"]
    kind: Literal["volume", "photo"] = Field(
        "volume", description="volume: DICOM series, volume files or sessions of them; photo: JPEG/PNG photographs "
        "(modality XC), one case per file.")
    body_part: str
    sequences: list[SequenceSpec] = Field(
        default_factory=list, description="Named inputs of a multi-sequence model, in order (the first present is "
        "the grid the outputs are on); empty for a model of one volume.")
    spacing_mm: SpacingRange = SpacingRange()
    min_slices: int = Field(8, ge=1)
    contrast: Literal["any", "non-contrast", "contrast"] = "any"
    on_gap: Literal["refuse", "continue"] = Field(
        "continue", description="What to do with a series that has a missing slice (a gap)."
    )


class SegmentSpec(Strict):
    """One output segment: its label value in the predicted label map and its codes."""

    label: int = Field(ge=1, le=255)
    name: str
    category: Code
    type: Code
    modifier: Code | None = None
    anatomic_region: Code | None = None
    color_rgb: tuple[int, int, int] | None = None


class ValueSpec(Strict):
    """One scalar output (a measurement, score or class probability)."""

    name: str
    unit: str = Field(description="UCUM unit code, e.g. 'ml', 'mm3', '{score}'.")
    concept: Code
    description: str = ""


class OutputSpec(Strict):
    segments: list[SegmentSpec] = Field(default_factory=list)
    values: list[ValueSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> OutputSpec:
        labels = [s.label for s in self.segments]
        if len(labels) != len(set(labels)):
            raise ValueError(f"segment labels must be unique, got {labels}")
        return self


class Weights(Strict):
    """Trained weights shipped with (or downloaded for) a model."""

    file: str = Field(description="Path relative to the model folder.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    license: str
    trained_on: str = Field(description="Plainly: what data these weights were trained on.")
    purpose: str = Field("", description="What the model uses these weights for, when it has more than one file.")


class Resources(Strict):
    device: Literal["cpu", "gpu", "cpu-or-gpu"] = "cpu"
    memory_gib: float = Field(2.0, gt=0)
    gpu_memory_gib: float | None = None


class Reference(Strict):
    """Where ``medhub verify`` finds this model's reference case (relative to the model folder)."""

    input: str
    expected: str
    tolerances: str = "reference/tolerances.yaml"


class ModelCard(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str
    version: str
    title: str
    description: str
    task: TaskType
    inputs: InputSpec
    outputs: OutputSpec
    weights: Weights | None = Field(
        None, description="None for a model that needs no weights (e.g. a classical algorithm)."
    )
    needs_weights: bool = Field(
        False, description="True when the model cannot run without trained weights."
    )
    how_to_train: str = Field(
        "", description="For a model shipped without weights: the commands that train them (shown when it refuses)."
    )
    extra_weights: list[Weights] = Field(
        default_factory=list, description="Further weights files the model loads (e.g. a second network), each "
        "checked against its sha256 before a run like ``weights``."
    )
    training_data: str = ""
    evaluation: str = ""
    intended_use: str
    limitations: str
    citations: list[str] = Field(default_factory=list)
    license: str
    authors: list[str] = Field(default_factory=list)
    resources: Resources = Resources()
    reference: Reference | None = None

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
            raise ValueError(f"version must look like MAJOR.MINOR[.PATCH], got {v!r}")
        return v

    def segment(self, label: int) -> SegmentSpec:
        for s in self.outputs.segments:
            if s.label == label:
                return s
        raise KeyError(label)


def load_card(path: str | Path) -> ModelCard:
    """Read and validate a ``card.yaml``; a malformed card is a :class:`ModelError` naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
        return ModelCard.model_validate(data)
    except FileNotFoundError as e:
        raise ModelError(path, "model card not found", code="card-missing") from e
    except (yaml.YAMLError, ValidationError) as e:
        first = str(e).splitlines()
        raise ModelError(path, f"invalid model card: {' '.join(first[:3])}", code="card-invalid") from e


def card_json_schema() -> str:
    """The JSON Schema of :class:`ModelCard`, pretty-printed."""
    return json.dumps(ModelCard.model_json_schema(), indent=2)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
