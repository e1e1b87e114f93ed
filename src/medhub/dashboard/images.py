"""Axial slices of a case with its segment overlays, for the dashboard's viewer.

A case's image is its input (the DICOM series or volume file named in its record), read again when first viewed;
its overlays are the case's ``labels.nii.gz`` or, failing that, its SEG read onto the image grid (by SOP instance),
in each segment's recommended display colour from the SEG (the card's colour for a label map). Without the input
(moved, or a release, which holds no images) the SEG is drawn on its own geometry over black. Everything is held in
canonical orientation (:mod:`medhub.io.orientation`): slice 0 is the most inferior, rows run anterior to posterior,
columns from the patient's right, as radiologists view axial slices.

A compare folder's cases have one label map per source; ``source`` picks it.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medhub.dashboard.catalog import Catalog
from medhub.errors import InputError, MedhubError
from medhub.io.orientation import apply_canonical, canonical_transform
from medhub.io.preview import WINDOW_PRESETS, auto_window, fallback_color, render_slice
from medhub.io.volume import Volume

#: Cases kept decoded in memory (a 512x512x300 CT with its labels is about 230 MB).
CACHED_CASES = 3


@dataclass
class ViewableCase:
    """A case in canonical orientation: ``image`` (None when the input is gone), labels per source, segments."""

    image: np.ndarray | None
    labels: dict[str, np.ndarray]
    segments: dict[str, list[dict[str, Any]]]
    spacing: tuple[float, float, float]
    modality: str | None
    note: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        if self.image is not None:
            return self.image.shape
        return next(iter(self.labels.values())).shape


class CaseImages:
    """Loads cases on demand (a small LRU cache) and renders their slices as PNG."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._cache: OrderedDict[str, ViewableCase] = OrderedDict()
        self._lock = threading.Lock()
        self._compare: Any = None
        self._compare_notes: list[str] = []

    def case(self, case_id: str) -> ViewableCase:
        with self._lock:
            if case_id in self._cache:
                self._cache.move_to_end(case_id)
                return self._cache[case_id]
        viewable = self._load(case_id)
        with self._lock:
            self._cache[case_id] = viewable
            while len(self._cache) > CACHED_CASES:
                self._cache.popitem(last=False)
        return viewable

    def meta(self, case_id: str) -> dict[str, Any]:
        view = self.case(case_id)
        first = next(iter(view.labels.values()), None)
        labelled = [] if first is None else np.flatnonzero(first.reshape(first.shape[0], -1).any(axis=1)).tolist()
        return {"labelled_slices": labelled, "slices": view.shape[0], "rows": view.shape[1], "columns": view.shape[2],
                "spacing_mm": list(view.spacing), "modality": view.modality, "has_image": view.image is not None,
                "segments": view.segments, "sources": list(view.labels), "note": view.note,
                "default_window": _default_window(view), "windows": [*WINDOW_PRESETS, "auto"]}

    def slice_png(self, case_id: str, index: int, *, window: str = "mediastinum", labels: set[int] | None = None,
                  source: str | None = None, size: int = 512) -> bytes:
        """Axial slice ``index`` (canonical, 0 = most inferior) with the chosen labels of ``source`` filled in."""
        view = self.case(case_id)
        if not 0 <= index < view.shape[0]:
            raise InputError(case_id, f"slice {index} outside 0..{view.shape[0] - 1}", code="bad-option")
        name = source or next(iter(view.labels), None)
        if name is not None and name not in view.labels:
            raise InputError(case_id, f"no source {name!r} for this case", code="bad-option")
        fills = []
        if name is not None:
            plane = view.labels[name][index]
            for i, segment in enumerate(view.segments[name]):
                if labels is None or segment["label"] in labels:
                    fills.append((plane == segment["label"], segment["color"] or fallback_color(i)))
        gray = view.image[index] if view.image is not None else np.full(view.shape[1:], -1000, np.int16)
        level, width = _window(window, gray if view.image is not None else None)
        picture = render_slice(gray, view.spacing[1], view.spacing[2], level, width, fills=fills, size=size)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    # -- loading -------------------------------------------------------------------------------------------

    def _load(self, case_id: str) -> ViewableCase:
        row = self.catalog.case(case_id)
        if row is None:
            raise InputError(case_id, "no such case", code="not-found")
        if self.catalog.kind == "compare":
            return self._load_compare(case_id)
        volume, note = _input_volume(row.get("input") or {}, self.catalog.record)
        outputs = {k: self.output_path(case_id, v) for k, v in (row.get("outputs") or {}).items()}
        labels, segments, grid = _case_labels(outputs, volume, self.catalog.card)
        if volume is None and grid is None:
            raise InputError(case_id, "neither the input images nor a label map or SEG of this case can be read",
                             code="not-found")
        return _canonical(volume or grid, {"prediction": labels} if labels is not None else {},
                          {"prediction": segments}, note, has_image=volume is not None)

    def output_path(self, case_id: str, value: str) -> Path | None:
        """Where an output file recorded as ``value`` is now: run records may hold paths relative to where the
        run was started, batch records absolute ones."""
        path = Path(value)
        candidates = [path] if path.is_absolute() else [self.catalog.folder / path]
        if self.catalog.kind == "batch":
            candidates.append(self.catalog.folder / self.catalog.record.get("output_dir", "") / case_id / path.name)
        found = next((p for p in candidates if p.is_file()), None)
        return found

    def _load_compare(self, case_id: str) -> ViewableCase:
        from medhub.compare.sources import parse_source
        from medhub.hub.cases import discover_cases

        record = self.catalog.record
        if self._compare is None:
            data, out = Path(record["input"]), self.catalog.folder
            specs = [s for s in [*record.get("sources", []), record.get("reference")] if s]
            pattern = (record.get("options") or {}).get("case_pattern")
            sources, self._compare_notes = {}, []
            for spec in specs:
                try:
                    sources[spec["name"]] = parse_source(spec.get("spec") or "", data=data, output=out,
                                                         case_pattern=pattern)
                except MedhubError as e:  # a source moved since the comparison: show the others
                    self._compare_notes.append(f"{spec['name']}: {e.message}")
            for source in sources.values():
                if hasattr(source, "load_record"):
                    source.load_record()
            cases = {c.id: c for c in discover_cases(data).cases}
            listed = {name: source.cases() for name, source in sources.items()}  # once: a SEG folder reads headers
            self._compare = (sources, cases, listed)
        sources, cases, listed = self._compare
        case = cases.get(case_id)
        if case is None:
            raise InputError(case_id, "this case's input is no longer where the comparison read it", code="not-found")
        grid = case.load()
        entry = next(c for c in record.get("cases", []) if c["case"] == case_id)
        labels, segments = {}, {}
        for name, source in sources.items():
            if entry["sources"].get(name) is None:
                continue
            match = next((c for c in listed[name] if set(c.keys) & set(entry["keys"])), None)
            if match is None:
                continue
            try:
                array, described = source.labels(match, grid)
            except MedhubError as e:
                self._compare_notes.append(f"{name}: {e.message}")
                continue
            labels[name] = array
            segments[name] = [segment_dict(s) for s in described]
        return _canonical(grid, labels, segments, "; ".join(self._compare_notes), has_image=True)


def segment_dict(segment: Any) -> dict[str, Any]:
    """A :class:`medhub.compare.sources.Segment` as the viewer's API describes it."""
    return {"label": segment.label, "name": segment.concept.name, "concept": segment.concept.key,
            "color": list(segment.color) if segment.color else None}


def _default_window(view: ViewableCase) -> str:
    if view.image is None:
        return "auto"
    return "mediastinum" if (view.modality or "CT") == "CT" else "auto"


def _window(name: str, gray: np.ndarray | None) -> tuple[float, float]:
    if name in WINDOW_PRESETS:
        return WINDOW_PRESETS[name]
    return (0.0, 2000.0) if gray is None else auto_window(gray)


def _input_volume(record: dict[str, Any], run_record: dict[str, Any]) -> tuple[Volume | None, str]:
    """The case's input image from its record, or ``(None, why)``."""
    from medhub.hub.cases import discover_cases

    path_text = record.get("path")
    if not path_text:
        return None, "the record names no input"
    path = Path(path_text)
    if not path.is_absolute() and run_record.get("input"):
        path = Path(run_record["input"]) / path.name if not path.exists() else path
    if not path.exists():
        return None, f"input {path_text} not found: overlays on black"
    try:
        cases = discover_cases(path).cases
        uid = record.get("series_instance_uid")
        case = next((c for c in cases if uid and c.series is not None and c.series.uid == uid), cases[0])
        return case.load(), ""
    except Exception as e:  # an input that cannot be read again: show what the outputs hold
        return None, f"input cannot be read ({e}): overlays on black"


def _case_labels(outputs: dict[str, Path | None], volume: Volume | None, card: dict[str, Any] | None
                 ) -> tuple[np.ndarray | None, list[dict[str, Any]], Volume | None]:
    """Labels on the volume's grid (or the SEG's own grid), segment descriptions and that grid."""
    from medhub.compare.sources import segments_from_seg
    from medhub.masks import resample_grid

    seg_path, nifti_path = outputs.get("seg"), outputs.get("nifti")
    segments: list[dict[str, Any]] = []
    if seg_path is not None:
        from medhub.io.seg import read_segment_descriptions

        segments = [segment_dict(s) for s in segments_from_seg(read_segment_descriptions(seg_path))]
    elif card is not None:
        for spec in card.get("outputs", {}).get("segments", []):
            segments.append({"label": spec["label"], "name": spec["name"], "concept": spec["type"]["value"],
                             "color": spec.get("color_rgb")})
    if nifti_path is not None:
        from medhub.io.nifti import read_volume

        labels = read_volume(nifti_path)
        grid = volume or labels
        return resample_grid(labels.array, labels.affine, grid.affine, grid.shape), segments, grid
    if seg_path is not None:
        from medhub.io.seg import read_seg

        if volume is not None and volume.source is not None:
            return read_seg(seg_path, reference=volume)[0], segments, volume
        from medhub.compare.sources import _seg_with_geometry

        array, affine, _ = _seg_with_geometry(seg_path)
        grid = volume or Volume(np.zeros(array.shape, np.int16), affine)
        return resample_grid(array, affine, grid.affine, grid.shape), segments, grid
    return None, segments, volume


def _canonical(volume: Volume, labels: dict[str, np.ndarray], segments: dict[str, list[dict[str, Any]]],
               note: str, *, has_image: bool) -> ViewableCase:
    transform = canonical_transform(volume.direction)
    spacing = tuple(float(volume.spacing[axis]) for axis in transform[0])
    return ViewableCase(image=apply_canonical(volume.array, transform) if has_image else None,
                        labels={k: apply_canonical(v, transform) for k, v in labels.items()},
                        segments={k: v for k, v in segments.items() if k in labels} or segments,
                        spacing=spacing,  # type: ignore[arg-type]
                        modality=volume.modality, note=note)
