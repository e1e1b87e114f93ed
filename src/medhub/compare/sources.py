"""Where the segmentations of a comparison come from, all behind one interface.

A *source* gives, per case, a label map on the case's grid and what each label means as a coded concept:

* :class:`ModelSource`: a hub model run by the same runner as ``medhub run`` (or its earlier run, reused when the
  model version and weights are unchanged);
* :class:`SegFolderSource`: a folder of DICOM SEG files made by any tool (TotalSegmentator, nnU-Net through
  dcmqi, medhub): each SEG carries its concepts and the series it segments;
* :class:`LabelMapSource`: NIfTI / NRRD / MHA label maps with a small mapping file, label -> concept.

Segments are matched across sources by :class:`Concept` (the SNOMED CT or DCM code of the segmented property type
and its modifier), never by label number. Cases are matched by series instance UID where a source knows it, else by
a name taken from the file name (see :func:`case_name`).

A mapping file (YAML or JSON) for label maps::

    name: deepcac                       # optional; default: the folder's or file's name
    files: "*_labels_3mm.nrrd"          # optional glob, relative to the mapping file (or absolute)
    case_pattern: '^(\\d+)_'            # optional; the first group names the case
    labels:
      1: {name: Heart, type: {value: "80891009", scheme: SCT, meaning: Heart}}
      3: {name: Coronary calcium, type: {value: "29483008", scheme: SCT, meaning: Calcified atheromatous plaque}}
    values: values.csv                  # optional: case,<value name>... scalars to compare with models' values

It can sit in the folder as ``labels.yaml`` / ``labels.json``, or be named on the command line itself.
"""

from __future__ import annotations

import csv
import glob
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medhub.errors import InputError
from medhub.hub.card import SegmentSpec
from medhub.io.nifti import is_volume_file
from medhub.io.tree import walk_files
from medhub.io.volume import Volume

MAPPING_NAMES = ("labels.yaml", "labels.yml", "labels.json")


@dataclass(frozen=True)
class Concept:
    """What a segment is: the segmented property type code and its modifier (e.g. Lung + Right).

    ``key`` (``"SCT:39607008"`` or ``"SCT:39607008+SCT:24028007"``) is what matching compares; ``name`` is for
    people.
    """

    type: tuple[str, str]
    modifier: tuple[str, str] | None
    name: str

    @property
    def key(self) -> str:
        base = f"{self.type[0]}:{self.type[1]}"
        return base + (f"+{self.modifier[0]}:{self.modifier[1]}" if self.modifier else "")

    @classmethod
    def from_codes(cls, type_code: tuple[str, str, str], modifier: tuple[str, str, str] | None) -> Concept:
        """From ``(value, scheme, meaning)`` triples, as :func:`medhub.io.seg.read_seg` describes segments."""
        value, scheme, meaning = type_code
        name = meaning if modifier is None else f"{modifier[2]} {meaning[:1].lower()}{meaning[1:]}"
        return cls((scheme, value), (modifier[1], modifier[0]) if modifier else None, name)

    @classmethod
    def from_spec(cls, spec: SegmentSpec) -> Concept:
        modifier = (spec.modifier.value, spec.modifier.scheme, spec.modifier.meaning) if spec.modifier else None
        return cls.from_codes((spec.type.value, spec.type.scheme, spec.type.meaning), modifier)


@dataclass(frozen=True)
class Segment:
    """One label of a source's label map, with its concept and display colour (RGB 0-255, when known)."""

    label: int
    concept: Concept
    color: tuple[int, int, int] | None = None


@dataclass
class SourceCase:
    """One case as a source has it, before its pixels are read.

    ``keys`` are the names it can be matched by (a series UID, a file name); ``path`` the file with its labels.
    """

    keys: tuple[str, ...]
    path: Path
    display: str
    values: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def case_name(path_or_id: str | Path, pattern: str | None) -> str:
    """The name a file or case id is matched by: the file name without its volume suffix, or the first group (else
    the whole match) of ``pattern`` searched in it; the whole stem when the pattern does not match."""
    name = Path(str(path_or_id)).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if pattern:
        found = re.search(pattern, name)
        if found:
            return found.group(1) if found.groups() else found.group(0)
    return name


class Source:
    """The interface every source meets: a name, its cases, and a label map per case on a given grid."""

    name: str
    kind: str
    #: The command-line text the source was made from (kept in compare.json, so the dashboard can reopen it).
    spec: str = ""

    def cases(self) -> list[SourceCase]:
        raise NotImplementedError

    def labels(self, case: SourceCase, grid: Volume) -> tuple[np.ndarray, list[Segment]]:
        """The case's label map resampled onto ``grid`` (uint8/uint16, 0 background) and its segments."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the provenance record says about this source."""
        return {"name": self.name, "kind": self.kind, "spec": self.spec}


def _on_grid(volume: Volume, grid: Volume) -> np.ndarray:
    from medhub.masks import resample_grid

    return resample_grid(volume.array, volume.affine, grid.affine, grid.shape)


# ----------------------------------------------------------------------------------------------- label maps


class _CodeModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str
    scheme: str
    meaning: str


class _LabelModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    type: _CodeModel
    modifier: _CodeModel | None = None
    color_rgb: tuple[int, int, int] | None = None


class LabelMapping(BaseModel):
    """A mapping file (see the module docstring), validated."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    files: str | None = None
    case_pattern: str | None = None
    labels: dict[int, _LabelModel] = Field(min_length=1)
    values: str | None = None

    def segments(self) -> list[Segment]:
        out = []
        for label, spec in sorted(self.labels.items()):
            modifier = (spec.modifier.value, spec.modifier.scheme, spec.modifier.meaning) if spec.modifier else None
            concept = Concept.from_codes((spec.type.value, spec.type.scheme, spec.type.meaning), modifier)
            if spec.name:
                concept = Concept(concept.type, concept.modifier, spec.name)
            out.append(Segment(label=int(label), concept=concept, color=spec.color_rgb))
        return out


def read_mapping(path: Path) -> LabelMapping:
    """Read and validate a mapping file; :class:`InputError` naming the file and the first problem otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        return LabelMapping.model_validate(data)
    except OSError as e:
        raise InputError(path, f"cannot read label mapping ({e.strerror or e})", code="not-found") from e
    except (ValueError, yaml.YAMLError, ValidationError) as e:
        first = " ".join(str(e).split())[:300]
        raise InputError(path, f"invalid label mapping: {first}", code="bad-mapping") from e


class LabelMapSource(Source):
    """NIfTI / NRRD / MHA label maps with a mapping file; cases are matched by file name."""

    kind = "label-maps"

    def __init__(self, files: list[Path], mapping: LabelMapping, name: str, origin: Path,
                 case_pattern: str | None = None) -> None:
        self.files = files
        self.mapping = mapping
        self.name = name
        self.origin = origin
        self.case_pattern = mapping.case_pattern or case_pattern
        self.values = _read_values(origin.parent / mapping.values if origin.is_file() else origin / mapping.values,
                                   self.case_pattern) if mapping.values else {}

    def cases(self) -> list[SourceCase]:
        out = []
        for path in self.files:
            key = case_name(path, self.case_pattern)
            out.append(SourceCase(keys=(key,), path=path, display=path.name, values=self.values.get(key, {})))
        return out

    def labels(self, case: SourceCase, grid: Volume) -> tuple[np.ndarray, list[Segment]]:
        from medhub.io.nifti import read_volume

        volume = read_volume(case.path)
        return _as_labels(_on_grid(volume, grid), case.path), self.mapping.segments()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.origin), "files": len(self.files),
                "case_pattern": self.case_pattern,
                "segments": {s.label: s.concept.key for s in self.mapping.segments()}}


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype.kind == "f" and (not np.all(np.isfinite(array)) or np.any(array != np.round(array))):
        raise InputError(path, "label map holds non-integer values", code="bad-labels")
    if array.min() < 0 or array.max() > 65535:
        raise InputError(path, f"label values {array.min()}..{array.max()} outside 0..65535", code="bad-labels")
    return array.astype(np.uint16 if array.max() > 255 else np.uint8)


def _read_values(path: Path, pattern: str | None) -> dict[str, dict[str, float]]:
    """``case -> {value name: number}`` from a CSV with a ``case`` column (matched like file names)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as e:
        raise InputError(path, f"cannot read values ({e.strerror or e})", code="not-found") from e
    out: dict[str, dict[str, float]] = {}
    for line, row in enumerate(rows, start=2):
        case = (row.pop("case", None) or "").strip()
        if not case:
            raise InputError(path, f"line {line}: no 'case' value", code="bad-values")
        numbers = {}
        for name, text in row.items():
            try:
                numbers[name] = float(text)
            except (TypeError, ValueError):
                continue  # an empty or text cell is simply not a value
        out[case_name(case, pattern)] = numbers
    return out


# ----------------------------------------------------------------------------------------------- DICOM SEG


class SegFolderSource(Source):
    """DICOM SEG files made by any tool; cases are matched by the series each SEG references."""

    kind = "dicom-seg"

    def __init__(self, files: list[Path], name: str, origin: Path) -> None:
        self.files = files
        self.name = name
        self.origin = origin

    def cases(self) -> list[SourceCase]:
        import pydicom

        out = []
        for path in self.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            series = ds.get("ReferencedSeriesSequence")
            uid = str(series[0].SeriesInstanceUID) if series else ""
            keys = tuple(k for k in (uid, case_name(path.parent if path.name == "seg.dcm" else path, None)) if k)
            out.append(SourceCase(keys=keys, path=path, display=str(path.relative_to(self.origin))
                                  if path.is_relative_to(self.origin) else path.name))
        return out

    def labels(self, case: SourceCase, grid: Volume) -> tuple[np.ndarray, list[Segment]]:
        from medhub.io.seg import read_seg

        if grid.source is not None:
            try:
                labels, described = read_seg(case.path, reference=grid)
            except Exception:  # the SEG references other instances: fall back on its geometry
                labels, described = None, None
            if labels is not None:
                return labels, segments_from_seg(described)
        labels, affine, described = _seg_with_geometry(case.path)
        from medhub.masks import resample_grid

        return resample_grid(labels, affine, grid.affine, grid.shape), segments_from_seg(described)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.origin), "files": len(self.files)}


def _seg_with_geometry(path: Path) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """A SEG's label map on its own geometry (highdicom ``get_volume``: (slice, row, column), LPS), its affine
    and its segment descriptions."""
    import highdicom as hd

    from medhub.io.seg import read_segment_descriptions

    volume = hd.seg.segread(path).get_volume(combine_segments=True, relabel=False, dtype=np.uint8)
    return np.asarray(volume.array), np.asarray(volume.affine, dtype=np.float64), read_segment_descriptions(path)


def segments_from_seg(described: list[dict[str, Any]]) -> list[Segment]:
    """:class:`Segment` objects from :func:`medhub.io.seg.read_seg`'s descriptions (segments without a type code,
    which cannot be matched, are left out)."""
    out = []
    for segment in described:
        if segment["type"] is None:
            continue
        concept = Concept.from_codes(segment["type"], segment["modifier"])
        name = segment["label"] or concept.name
        out.append(Segment(segment["number"], Concept(concept.type, concept.modifier, name), segment["color_rgb"]))
    return out


# ----------------------------------------------------------------------------------------------- hub models


class ModelSource(Source):
    """A hub model run on the comparison's input with ``medhub run``'s runner, into ``OUTPUT/sources/<id>/``."""

    kind = "model"

    def __init__(self, model_id: str, data: Path, output: Path, case_pattern: str | None = None) -> None:
        from medhub.hub.registry import get_model

        self.model = get_model(model_id)
        self.name = model_id
        self.data = data
        self.folder = output / "sources" / model_id
        self.case_pattern = case_pattern
        self.reused = False
        self.record: dict[str, Any] = {}

    def prepare(self, progress: Any = None) -> None:
        """Run the model unless a run of this version and these weights on this input is already there."""
        from medhub.hub.runner import check_model_runnable, run

        digest = check_model_runnable(self.model)
        record = self.load_record()
        model = record.get("model", {})
        if (model.get("version"), model.get("weights_sha256"), record.get("input")) == (
                self.model.card.version, digest, str(self.data.resolve())):
            self.reused = True
            return
        kwargs = {}
        if progress is not None:
            kwargs = {"on_case_start": lambda case, i, n: progress(f"{self.name}: {case.id}", i, n)}
        run(self.model, self.data, self.folder, outputs=["seg", "nifti", "json"], **kwargs)
        self.load_record()

    def load_record(self) -> dict[str, Any]:
        """The run record of the model's earlier run in the output folder (empty when there is none)."""
        path = self.folder / "run.json"
        self.record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return self.record

    def cases(self) -> list[SourceCase]:
        out = []
        for case in self.record.get("cases", []):
            if case.get("status") != "ok" or "nifti" not in case.get("outputs", {}):
                continue
            record = case.get("input", {})
            keys = [record.get("series_instance_uid") or "",
                    case_name(record.get("path", case["case_id"]), self.case_pattern)
                    if record.get("kind") == "volume-file" else case_name(case["case_id"], self.case_pattern)]
            values = {k: float(v) for k, v in case.get("values", {}).items() if isinstance(v, int | float)}
            # The run folder, not the recorded path: that may be relative to where the run was started.
            labels = self.folder / case["case_id"] / Path(case["outputs"]["nifti"]).name
            out.append(SourceCase(keys=tuple(k for k in keys if k), path=labels, display=case["case_id"],
                                  values=values))
        return out

    def failures(self) -> list[dict[str, str]]:
        """Cases the model refused or failed, with the reason (they are listed, not dropped silently)."""
        return [{"case": c["case_id"], "reason": c.get("reason_code") or "", "message": c.get("message") or ""}
                for c in self.record.get("cases", []) if c.get("status") != "ok"]

    def labels(self, case: SourceCase, grid: Volume) -> tuple[np.ndarray, list[Segment]]:
        from medhub.io.nifti import read_volume

        volume = read_volume(case.path)
        segments = [Segment(s.label, Concept.from_spec(s), s.color_rgb) for s in self.model.card.outputs.segments]
        return _as_labels(_on_grid(volume, grid), case.path), segments

    def describe(self) -> dict[str, Any]:
        card = self.model.card
        model = self.record.get("model", {})
        return {**super().describe(), "model_id": card.id, "version": card.version,
                "weights_sha256": model.get("weights_sha256"), "run": str(self.folder / "run.json"),
                "reused_earlier_run": self.reused}


# ----------------------------------------------------------------------------------------------- parsing


def parse_source(spec: str, *, data: Path, output: Path, case_pattern: str | None = None) -> Source:
    """A source from its command-line text: ``[NAME=]MODEL_ID``, ``[NAME=]FOLDER`` (of SEG files, or of label maps
    with a ``labels.yaml``) or ``[NAME=]MAPPING.yaml``. :class:`InputError` when it is none of these."""
    from medhub.hub.registry import available_models

    name, _, rest = spec.partition("=")
    if not rest or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        name, rest = "", spec
    path = Path(rest)
    if not path.exists() and rest in available_models():
        source: Source = ModelSource(rest, data, output, case_pattern)
    elif path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
        mapping = read_mapping(path)
        pattern = mapping.files or "*"
        # glob.glob, not Path.glob: the pattern may be absolute or climb out of the mapping file's folder.
        files = sorted(Path(p) for p in glob.glob(str(path.parent / pattern)) if Path(p).is_file()
                       and is_volume_file(p))
        if not files:
            raise InputError(path, f"no label maps match {pattern!r} beside the mapping file", code="no-input")
        source = LabelMapSource(files, mapping, mapping.name or path.stem, path, case_pattern)
    elif path.is_dir():
        source = _folder_source(path, case_pattern)
    else:
        raise InputError(path, "not a model id, a folder of predictions or a label mapping file", code="not-found")
    if name:
        source.name = name
    # Kept in compare.json for the dashboard, which may run elsewhere: paths absolute, the name explicit.
    source.spec = rest if isinstance(source, ModelSource) and not name else (
        f"{source.name}={path.resolve() if path.exists() else rest}")
    return source


def _folder_source(folder: Path, case_pattern: str | None) -> Source:
    files = walk_files(folder).files
    mapping_file = next((folder / n for n in MAPPING_NAMES if (folder / n).is_file()), None)
    if mapping_file is not None:
        mapping = read_mapping(mapping_file)
        maps = sorted(p for p in files if is_volume_file(p) and (not mapping.files or p.match(mapping.files)))
        if not maps:
            raise InputError(folder, "no NIfTI/NRRD/MHA label maps beside the mapping file", code="no-input")
        return LabelMapSource(maps, mapping, mapping.name or folder.name, folder, case_pattern)
    segs = [p for p in files if _is_seg(p)]
    if segs:
        return SegFolderSource(segs, folder.name, folder)
    if any(is_volume_file(p) for p in files):
        raise InputError(folder, f"label maps need a mapping file ({' or '.join(MAPPING_NAMES)}) that says which "
                         "label is which concept", code="no-mapping")
    raise InputError(folder, "no DICOM SEG files or label maps found", code="no-input")


def _is_seg(path: Path) -> bool:
    import pydicom

    try:
        with open(path, "rb") as handle:
            if handle.read(132)[128:132] != b"DICM":
                return False
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality")) == (
            "SEG")
    except Exception:  # unreadable files are not SEGs; discovery of the images reports them
        return False

