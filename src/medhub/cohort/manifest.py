"""Which cases a batch runs: every series under a root folder, or the rows of a manifest CSV.

A batch case is a :class:`CaseSource`: a stable case id plus either an already discovered
:class:`~medhub.hub.cases.Case` (``--input ROOT``: the coordinator reads the headers once) or a path and an
optional series UID that the worker resolves itself (``--manifest``: the coordinator reads no DICOM header, which
is what makes a 128k-row manifest start in seconds).

Manifest CSV columns (names are case-insensitive; at least one of ``path`` / ``series_instance_uid``):

``path``
    A DICOM series folder (or file), or a NIfTI/NRRD/MHA file. Relative paths are resolved against ``--input``
    when it is given, else against the manifest's own folder.
``series_instance_uid``
    Picks one series inside ``path``; without ``path`` it is looked up under ``--input ROOT`` (which then must be
    given, and is scanned once).
``case_id``
    Optional output name; by default the path relative to its base, made file-name safe.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medhub.errors import InputError
from medhub.hub.card import SequenceSpec
from medhub.hub.cases import Case, discover_cases, discover_inputs

_PATH_COLUMNS = ("path", "folder", "file")
_UID_COLUMNS = ("series_instance_uid", "seriesinstanceuid", "series_uid")
_ID_COLUMNS = ("case_id", "id")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class CaseSource:
    """One case of a batch before it runs.

    ``case`` is set when the coordinator already discovered it; otherwise the worker calls
    :func:`resolve_case`. ``error`` (reason code, message) marks a manifest row that cannot run at all (its series
    UID is not under the root); the batch records it as failed without starting a worker.
    """

    case_id: str
    source_path: str
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    patient_id: str = ""
    case: Case | None = None
    error: tuple[str, str] | None = None


def case_identity(case: Case) -> dict[str, str]:
    """Patient ID and study/series UIDs of a discovered case (surrogates where the files lack them); a session
    is identified by its first DICOM sequence."""
    if case.is_session:
        first = next((sub for sub in case.inputs.values() if sub.series is not None), None)
        return case_identity(first) if first is not None else {"patient_id": "", "study_instance_uid": "",
                                                               "series_instance_uid": ""}
    if case.series is None:
        return {"patient_id": "", "study_instance_uid": "", "series_instance_uid": ""}
    header = case.series.headers[0]
    return {
        "patient_id": str(header.get("PatientID", "") or "").strip(),
        "study_instance_uid": str(header.get("StudyInstanceUID", "") or ""),
        "series_instance_uid": case.series.uid,
    }


def _source_for(case: Case, case_id: str | None = None) -> CaseSource:
    identity = case_identity(case)
    return CaseSource(case_id=case_id or case.id, source_path=str(case.path), case=replace(case, id=case_id or case.id),
                      **identity)


def sources_from_root(root: str | Path, sequences: list[SequenceSpec] | None = None
                      ) -> tuple[list[CaseSource], list[str]]:
    """Every case under ``root`` (as ``medhub run`` finds them for a model of these ``sequences``) and the
    discovery warnings."""
    discovery = discover_inputs(root, sequences or [])
    return [_source_for(case) for case in discovery.cases], discovery.warnings


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def _strip_volume_suffix(text: str) -> str:
    for suffix in _VOLUME_SUFFIXES:
        if text.lower().endswith(suffix):
            return text[: -len(suffix)]
    return text


def _column(fieldnames: list[str], wanted: tuple[str, ...]) -> str | None:
    lowered = {name.strip().lower(): name for name in fieldnames}
    return next((lowered[w] for w in wanted if w in lowered), None)


def read_manifest(manifest: str | Path, root: str | Path | None = None) -> list[CaseSource]:
    """The cases a manifest CSV names, one per row (see the module docstring for the columns).

    A malformed manifest (no usable column, an empty row, a repeated case id) is refused as a whole with an
    :class:`InputError`; a row whose path or UID does not exist becomes a case that fails with its reason.
    """
    manifest = Path(manifest)
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fieldnames = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as e:
        raise InputError(manifest, f"cannot read manifest ({e.strerror or e})", code="not-found") from e
    path_col, uid_col, id_col = (_column(fieldnames, c) for c in (_PATH_COLUMNS, _UID_COLUMNS, _ID_COLUMNS))
    if path_col is None and uid_col is None:
        raise InputError(manifest, f"manifest needs a 'path' or 'series_instance_uid' column (found: "
                         f"{', '.join(fieldnames) or 'none'})", code="bad-manifest")
    base = Path(root) if root is not None else manifest.parent
    by_uid: dict[str, Case] | None = None
    sources: list[CaseSource] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        path_text = (row.get(path_col) or "").strip() if path_col else ""
        uid = (row.get(uid_col) or "").strip() if uid_col else ""
        explicit_id = (row.get(id_col) or "").strip() if id_col else ""
        if not path_text and not uid:
            raise InputError(manifest, f"line {line}: neither a path nor a series UID", code="bad-manifest")
        if path_text:
            path = Path(path_text)
            path = path if path.is_absolute() else base / path
            name = explicit_id or _slug(_strip_volume_suffix(path_text))
            sources.append(CaseSource(case_id=name, source_path=str(path), series_instance_uid=uid))
            continue
        if root is None:
            raise InputError(manifest, f"line {line}: a series UID without a path needs --input ROOT to look it "
                             "up in", code="bad-option")
        if by_uid is None:  # scan the root once, only when some row needs it
            by_uid = {c.series.uid: c for c in discover_cases(root).cases if c.series is not None}
        found = by_uid.get(uid)
        if found is None:
            sources.append(CaseSource(case_id=explicit_id or _slug(uid), source_path=str(root),
                                      series_instance_uid=uid,
                                      error=("not-found", f"series {uid}: not found under {root}")))
        else:
            sources.append(_source_for(found, explicit_id or None))
    explicit = Counter((row.get(id_col) or "").strip() for row in rows) if id_col else Counter()
    repeated = sorted(name for name, n in explicit.items() if name and n > 1)
    if repeated:
        raise InputError(manifest, f"case id {repeated[0]!r} occurs more than once", code="bad-manifest")
    return _unique_ids(sources, manifest, set(explicit))


def _unique_ids(sources: list[CaseSource], manifest: Path, explicit: set[str]) -> list[CaseSource]:
    """Rows that share a default id (one folder, several series) get a short suffix from their UID; ids given in
    the manifest are kept as they are."""
    counts: dict[str, int] = {}
    for source in sources:
        counts[source.case_id] = counts.get(source.case_id, 0) + 1
    unique = []
    for source in sources:
        if counts[source.case_id] > 1 and source.case_id not in explicit:
            if not source.series_instance_uid:
                raise InputError(manifest, f"case id {source.case_id!r} occurs {counts[source.case_id]} times; "
                                 "give a case_id or series_instance_uid column", code="bad-manifest")
            digest = hashlib.sha1(source.series_instance_uid.encode()).hexdigest()[:8]
            source = replace(source, case_id=f"{source.case_id}_{digest}")
        unique.append(source)
    seen: set[str] = set()
    for source in unique:
        if source.case_id in seen:
            raise InputError(manifest, f"case id {source.case_id!r} occurs more than once", code="bad-manifest")
        seen.add(source.case_id)
    return unique


def resolve_case(source: CaseSource, sequences: list[SequenceSpec] | None = None) -> Case:
    """The :class:`Case` a source stands for, discovering it when the coordinator did not (runs in the worker).

    Raises :class:`InputError` when the path holds no case, not the requested series, or several series and no
    UID to choose one.
    """
    if source.case is not None:
        return source.case
    cases = discover_inputs(source.source_path, sequences or []).cases
    if source.series_instance_uid:
        cases = [c for c in cases if c.series is not None and c.series.uid == source.series_instance_uid]
        if not cases:
            raise InputError(source.source_path, f"series {source.series_instance_uid} not found there",
                             code="not-found")
    if len(cases) > 1:
        raise InputError(source.source_path, f"{len(cases)} series here; add a series_instance_uid column to the "
                         "manifest to choose one", code="ambiguous")
    return replace(cases[0], id=source.case_id)


def identity_of(source: CaseSource) -> dict[str, Any]:
    """What the store records about a case before it runs."""
    return {"source_path": source.source_path, "patient_id": source.patient_id,
            "study_instance_uid": source.study_instance_uid, "series_instance_uid": source.series_instance_uid}
