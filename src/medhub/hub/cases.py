"""Finding the cases in an input path: DICOM series, volume files, or a folder of sessions."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medhub.errors import InputError
from medhub.hub.card import SequenceSpec
from medhub.io.dicom import DicomSeries, scan_dicom
from medhub.io.nifti import is_volume_file, read_volume
from medhub.io.photo import Photo, is_photo
from medhub.io.tree import FileTree
from medhub.io.volume import Volume


@dataclass
class Case:
    """One unit of work for a model: a DICOM series or a volume file, or, for a model of several named sequences,
    a session whose ``inputs`` map each sequence found to its series or file (``missing`` names the required ones
    that were not found).

    ``id`` names the case's output folder; it is derived from the input's relative location, so it is stable
    across runs.
    """

    id: str
    path: Path
    series: DicomSeries | None = None
    inputs: dict[str, Case] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    photo: bool = False

    @property
    def is_session(self) -> bool:
        return bool(self.inputs) or bool(self.missing)

    @property
    def label(self) -> str:
        """How messages name this case: ``series <uid>`` for DICOM, ``session <folder>`` for a session, the file
        path otherwise."""
        if self.is_session:
            return f"session {self.path}"
        return f"series {self.series.uid}" if self.series is not None else str(self.path)

    @property
    def modality(self) -> str | None:
        return (self.series.modality or None) if self.series is not None else None

    def load_photo(self) -> Photo:
        from medhub.io.photo import read_photo

        return Photo(read_photo(self.path), self.path.name)

    def load(self, workers: int | None = None) -> Volume:
        if self.series is not None:
            return self.series.load(workers=workers)
        return read_volume(self.path)

    def input_record(self) -> dict[str, Any]:
        """What the provenance record says about this input."""
        if self.is_session:
            return {"kind": "session", "path": os.path.abspath(self.path),
                    "inputs": {name: case.input_record() for name, case in self.inputs.items()},
                    "missing": list(self.missing)}
        if self.photo:
            from medhub.hub.card import sha256_file

            return {"kind": "photo", "path": os.path.abspath(self.path), "sha256": sha256_file(self.path)}
        if self.series is None:
            return {"kind": "volume-file", "path": os.path.abspath(self.path)}
        headers = self.series.headers
        return {
            "kind": "dicom-series",
            "path": os.path.abspath(self.path),
            "study_instance_uid": str(headers[0].get("StudyInstanceUID", "")),
            "series_instance_uid": self.series.uid,
            "modality": self.series.modality,
            "series_description": self.series.description,
            "instances": len(self.series.files),
            "surrogate_uids": dict(self.series.surrogate_uids),
            "geometry": self.series.geometry.messages(),
        }


@dataclass
class Discovery:
    """The cases under an input path, and what was skipped on the way (``tree`` names dangling links, duplicate
    paths and link loops; ``warnings`` says it in lines for the user)."""

    cases: list[Case]
    non_dicom_files: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tree: FileTree | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def _common_folder(files: list[Path]) -> Path:
    return Path(os.path.commonpath([f.parent for f in files]))


def discover_cases(path: str | Path, progress: Callable[[int, int], None] | None = None) -> Discovery:
    """Find every case under ``path``.

    * a volume file (NIfTI, NRRD, MHA) is one case;
    * a DICOM file or folder tree yields one case per series (mixed series are split);
    * volume files found in a folder tree are cases too.

    An input with no case at all is an :class:`InputError` that says what was found instead.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(root, "input not found", code="not-found")
    if root.is_file() and is_volume_file(root):
        return Discovery(cases=[Case(id=_slug(_volume_stem(root)), path=root)])

    scan = scan_dicom(root, progress=progress)
    tree = scan.tree
    volume_files = sorted(p for p in tree.files if is_volume_file(p)) if root.is_dir() else []
    base = root if root.is_dir() else root.parent

    cases: list[Case] = []
    for series in scan.series:
        folder = _common_folder(series.files)
        rel = folder.relative_to(base) if folder.is_relative_to(base) else Path(folder.name)
        name = _slug(str(rel)) if str(rel) != "." else _root_series_name(series, base)
        cases.append(Case(id=name, path=folder, series=series))
    for file in volume_files:
        rel = file.relative_to(base)
        cases.append(Case(id=_slug(str(rel.parent / _volume_stem(file))), path=file))
    _make_ids_unique(cases)

    warnings = [f"{file}: {reason} (skipped)" for file, reason in scan.unreadable]
    warnings += tree.summary()
    warnings += [w for s in scan.series for w in s.warnings]
    non_dicom = scan.non_dicom_files - len(volume_files)
    if not cases:
        raise InputError(root, _nothing_found(root, non_dicom, scan.unreadable, tree), code=_nothing_code(scan))
    return Discovery(cases=cases, non_dicom_files=max(non_dicom, 0), unreadable=scan.unreadable,
                     warnings=warnings, tree=tree)


def discover_inputs(path: str | Path, sequences: list[SequenceSpec],
                    progress: Callable[[int, int], None] | None = None, *, kind: str = "volume") -> Discovery:
    """The cases of a model: :func:`discover_photos` for a model of photos (``kind="photo"``),
    :func:`discover_sessions` for a model that declares named sequences, :func:`discover_cases` otherwise."""
    if kind == "photo":
        return discover_photos(path)
    return discover_sessions(path, sequences, progress) if sequences else discover_cases(path, progress)


def discover_photos(path: str | Path) -> Discovery:
    """Every JPEG or PNG photo under ``path`` (or ``path`` itself), one case each, named by its relative path
    without the suffix. Other files are counted and skipped."""
    from medhub.io.tree import walk_files

    root = Path(path)
    if not root.exists():
        raise InputError(root, "input not found", code="not-found")
    if root.is_file():
        if not is_photo(root):
            raise InputError(root, "not a JPEG or PNG photo", code="no-input")
        return Discovery(cases=[Case(id=_slug(root.stem), path=root, photo=True)])
    tree = walk_files(root)
    photos = sorted(p for p in tree.files if is_photo(p))
    cases = [Case(id=_slug(str(p.relative_to(root).with_suffix(""))), path=p, photo=True) for p in photos]
    if not cases:
        raise InputError(root, f"no JPEG or PNG photos ({len(tree.files)} other files)", code="no-input")
    return Discovery(cases=cases, non_dicom_files=len(tree.files) - len(photos), warnings=tree.summary(),
                     tree=tree)


def discover_sessions(path: str | Path, sequences: list[SequenceSpec],
                      progress: Callable[[int, int], None] | None = None) -> Discovery:
    """Sessions under ``path`` for a model of named ``sequences``, one case each:

    * a folder holding ``<name>.nii.gz`` files (or another volume suffix) for any declared name: FOMO60K's session
      layout; other files in it are ignored;
    * the DICOM series of one study: each declared sequence is the first series (in series-number order) whose
      SeriesDescription matches its rules, each series used once.

    A session that lacks a required sequence is still a case, with ``missing`` set: the runner refuses it naming
    the sequence, and the other sessions go on.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(root, "input not found", code="not-found")
    names = [s.name for s in sequences]
    required = [s.name for s in sequences if s.required]
    scan = scan_dicom(root, progress=progress)
    tree = scan.tree
    base = root if root.is_dir() else root.parent
    cases: list[Case] = []
    by_folder: dict[Path, dict[str, Path]] = {}
    for file in tree.files:
        if is_volume_file(file) and _volume_stem(file).lower() in names:
            by_folder.setdefault(file.parent, {})[_volume_stem(file).lower()] = file
    for folder, files in sorted(by_folder.items()):
        rel = folder.relative_to(base) if folder.is_relative_to(base) else Path(folder.name)
        case_id = _slug(str(rel)) if str(rel) != "." else _slug(folder.name)
        inputs = {n: Case(id=case_id, path=files[n]) for n in names if n in files}
        cases.append(Case(id=case_id, path=folder, inputs=inputs, missing=[n for n in required if n not in files]))
    by_study: dict[str, list[DicomSeries]] = {}
    for series in scan.series:
        by_study.setdefault(str(series.headers[0].get("StudyInstanceUID", "")), []).append(series)
    for studies in by_study.values():
        studies.sort(key=lambda s: (_series_number(s), s.uid))
        inputs, used = {}, set()
        for spec in sequences:
            match = next((s for s in studies if s.uid not in used and spec.matches(s.description)), None)
            if match is not None:
                used.add(match.uid)
                inputs[spec.name] = match
        folder = _common_folder([f for s in studies for f in s.files])
        rel = folder.relative_to(base) if folder.is_relative_to(base) else Path(folder.name)
        case_id = _slug(str(rel)) if str(rel) != "." else _root_series_name(studies[0], base)
        cases.append(Case(id=case_id, path=folder, inputs={n: Case(id=case_id, path=_common_folder(s.files), series=s)
                                                           for n, s in inputs.items()},
                          missing=[n for n in required if n not in inputs]))
    _make_ids_unique(cases)
    warnings = [f"{file}: {reason} (skipped)" for file, reason in scan.unreadable] + tree.summary()
    if not cases:
        raise InputError(root, f"no session with any of the sequences {', '.join(names)} (NIfTI files named "
                         "<sequence>.nii.gz, or DICOM series whose description matches)", code="no-input")
    return Discovery(cases=cases, non_dicom_files=0, unreadable=scan.unreadable, warnings=warnings, tree=tree)


def _series_number(series: DicomSeries) -> int:
    try:
        return int(series.headers[0].get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        return 0


def _root_series_name(series: DicomSeries, folder: Path) -> str:
    """Name a series that sits directly in the input folder: patient ID and series number when the files
    have them (a folder called ``dicom`` or ``input`` says little), else the folder's name."""
    header = series.headers[0]
    patient = str(header.get("PatientID") or "").strip()
    number = str(header.get("SeriesNumber") or "").strip()
    if patient:
        return _slug(f"{patient}_s{number}" if number else patient)
    return _slug(folder.name)


def _volume_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _make_ids_unique(cases: list[Case]) -> None:
    """Series that share a folder get a short, stable suffix from their UID."""
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.id] = counts.get(case.id, 0) + 1
    for case in cases:
        if counts[case.id] > 1 and case.series is not None:
            number = case.series.headers[0].get("SeriesNumber")
            tag = f"s{number}" if number not in (None, "") else ""
            digest = hashlib.sha1(case.series.uid.encode()).hexdigest()[:6]
            case.id = f"{case.id}_{tag}_{digest}" if tag else f"{case.id}_{digest}"


def _nothing_found(root: Path, non_dicom: int, unreadable: list[tuple[Path, str]], tree: FileTree) -> str:
    if unreadable:
        first_path, first_reason = unreadable[0]
        more = f" (and {len(unreadable) - 1} more unreadable files)" if len(unreadable) > 1 else ""
        return f"no readable DICOM series: {first_path}: {first_reason}{more}"
    skipped = ([f"{non_dicom} non-DICOM files skipped"] if non_dicom else []) + tree.summary()
    if root.is_dir() and not any(root.iterdir()):
        return "empty folder: no DICOM series or volume files"
    if skipped:
        return f"no DICOM series or volume files found ({'; '.join(skipped)})"
    return "no DICOM series or volume files found"


def _nothing_code(scan: Any) -> str:
    return "unreadable" if scan.unreadable else "no-input"
