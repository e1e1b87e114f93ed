"""The dashboard's web app (FastAPI): a JSON API over one results folder and a small static frontend.

Why FastAPI + a plain HTML/JS page rather than Dash or Panel: the viewer's slices are PNGs rendered on the server
(where the volume is), the case table is SQL on the server, and the page needs no build step or browser download;
FastAPI gives typed routes and an OpenAPI schema, uvicorn serves it, and the whole frontend is three static files.

Security: the app reads; it never writes into the folder (the batch store is opened read-only). ``/files/...``
serves only regular files whose real path (links resolved) lies inside the folder; anything else is a 404 that
says nothing about what exists. With ``anonymize`` every answer is scrubbed of patient names, IDs and birth dates,
case ids become pseudonyms, and DICOM downloads are de-identified on the fly (other downloads are refused).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from medhub.dashboard.catalog import PATIENT_KEYS, SEARCHED, Catalog, open_catalog
from medhub.dashboard.images import CaseImages
from medhub.errors import MedhubError

STATIC = Path(__file__).parent / "static"
_HIDDEN = "(hidden)"
_DICOM_PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDsSequence",
                       "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientAddress")


class Dashboard:
    """The state behind the app: the catalog, the image loader and the anonymization mapping."""

    def __init__(self, folder: Path, anonymize: bool) -> None:
        self.catalog: Catalog = open_catalog(folder)
        self.folder = self.catalog.folder
        self.images = CaseImages(self.catalog)
        self.anonymize = anonymize
        ids = self.catalog.case_ids() if anonymize else []
        self.alias = {case_id: f"case-{n:05d}" for n, case_id in enumerate(ids, start=1)}
        self.real = {alias: case_id for case_id, alias in self.alias.items()}

    def case_id(self, shown: str) -> str:
        """The real case id of an id as the browser knows it; 404 for an unknown one."""
        case_id = self.real.get(shown, shown if not self.anonymize else None)
        if case_id is None or self.catalog.case(case_id) is None:
            raise HTTPException(404, "no such case")
        return case_id

    def scrub(self, value: Any, secrets: tuple[str, ...] = ()) -> Any:
        """``value`` without patient keys, paths or the given strings, when anonymizing; else as it is."""
        if not self.anonymize:
            return value
        if isinstance(value, dict):
            return {k: (_HIDDEN if k in ("path", "source_path", "input", "source") and isinstance(v, str) else
                        self.scrub(v, secrets)) for k, v in value.items() if k not in PATIENT_KEYS}
        if isinstance(value, list):
            return [self.scrub(v, secrets) for v in value]
        if isinstance(value, str):
            for secret in secrets:
                if secret:
                    value = value.replace(secret, _HIDDEN)
            return value
        return value

    def row_for_browser(self, row: dict[str, Any]) -> dict[str, Any]:
        secrets = tuple(s for s in (row.get("patient_id"), row["case_id"]) if s and len(str(s)) > 2)
        shown = self.scrub(row, secrets)
        shown["case_id"] = self.alias.get(row["case_id"], row["case_id"])
        shown["downloads"] = self.downloads(row)
        return shown

    def downloads(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """Output files of a case that lie inside the folder, as URLs under ``/files/``."""
        links = []
        for kind, value in (row.get("outputs") or {}).items():
            relative = self.relative_output(row["case_id"], value)
            if relative is None or (self.anonymize and not relative.endswith((".dcm", ".json"))):
                continue
            links.append({"kind": kind, "name": Path(relative).name, "url": f"/files/{relative}"})
        return links

    def relative_output(self, case_id: str, value: str) -> str | None:
        path = self.images.output_path(case_id, value)
        if path is None:
            return None
        try:
            return path.resolve().relative_to(self.folder).as_posix()
        except ValueError:
            return None

    def safe_file(self, requested: str) -> Path:
        """The file ``requested`` (relative to the folder) if it really lies inside it; else 404."""
        if not requested or requested.startswith(("/", "\\")) or "\x00" in requested or re.match(r"^[A-Za-z]:",
                                                                                                   requested):
            raise HTTPException(404, "not found")
        if any(part in ("..", ".") for part in re.split(r"[\\/]", requested)):
            raise HTTPException(404, "not found")
        try:
            path = (self.folder / requested).resolve(strict=True)
        except (OSError, RuntimeError):
            raise HTTPException(404, "not found") from None
        if not path.is_relative_to(self.folder) or not path.is_file():
            raise HTTPException(404, "not found")
        return path


def create_app(folder: str | Path, *, anonymize: bool = False) -> FastAPI:
    """The dashboard app for one results folder (raises :class:`MedhubError` if it is not one)."""
    state = Dashboard(Path(folder), anonymize)
    app = FastAPI(title="medhub dashboard", docs_url=None, redoc_url=None)
    app.state.dashboard = state

    @app.exception_handler(MedhubError)
    def medhub_error(request: Any, error: MedhubError) -> JSONResponse:
        return JSONResponse({"detail": state.scrub(error.message)}, status_code=400 if error.code.startswith(
            "bad") else 404)

    @app.get("/api/overview")
    def overview() -> dict[str, Any]:
        data = state.catalog.overview()
        data["anonymized"] = state.anonymize
        data["folder"] = _HIDDEN if state.anonymize else data["folder"]
        return state.scrub(data)

    @app.get("/api/cases")
    def cases(offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500), sort: str = "case_id",
              desc: bool = False, q: str = "", status: str = "") -> dict[str, Any]:
        # Anonymized, a search must not probe real case ids or patient IDs: it looks at reasons and messages only.
        fields = ("reason_code", "message") if state.anonymize else SEARCHED
        page = state.catalog.query(offset=offset, limit=limit, sort=sort, descending=desc, text=q, status=status,
                                   text_fields=fields)
        return {"total": page.total, "offset": offset, "limit": limit,
                "rows": [state.row_for_browser(r) for r in page.rows]}

    @app.get("/api/cases/{shown_id}")
    def case(shown_id: str) -> dict[str, Any]:
        case_id = state.case_id(shown_id)
        row = state.catalog.case(case_id)
        assert row is not None
        record = {k: v for k, v in state.catalog.record.items() if k not in ("cases", "summary")}
        secrets = tuple(s for s in (row.get("patient_id"), case_id) if s and len(str(s)) > 2)
        return {**state.row_for_browser(row), "card": state.catalog.card,
                "provenance": state.scrub(record, secrets), "kind": state.catalog.kind}

    @app.get("/api/cases/{shown_id}/image")
    def image(shown_id: str) -> dict[str, Any]:
        return state.scrub(state.images.meta(state.case_id(shown_id)))

    @app.get("/api/cases/{shown_id}/slice/{index}.png")
    def slice_png(shown_id: str, index: int, window: str = "mediastinum", labels: str | None = None,
                  source: str | None = None, size: int = Query(512, ge=64, le=1024)) -> Response:
        wanted = None if labels is None else {int(x) for x in labels.split(",") if x.strip().isdigit()}
        png = state.images.slice_png(state.case_id(shown_id), index, window=window, labels=wanted, source=source,
                                     size=size)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/compare")
    def compare() -> dict[str, Any]:
        if state.catalog.kind != "compare":
            raise HTTPException(404, "not a compare folder")
        record = state.catalog.record
        return state.scrub({k: record.get(k) for k in ("sources", "reference", "pairs", "summary", "unmatched",
                                                       "options", "failures")})

    @app.get("/files/{requested:path}")
    def files(requested: str) -> Response:
        path = state.safe_file(requested)
        if not state.anonymize:
            return FileResponse(path)
        if path.suffix == ".dcm":
            return Response(_deidentified(path), media_type="application/dicom")
        if path.suffix == ".json":
            data = state.scrub(json.loads(path.read_text(encoding="utf-8")))
            return JSONResponse(data)
        raise HTTPException(403, "only DICOM and JSON files are served when anonymizing")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _deidentified(path: Path) -> bytes:
    """The DICOM file with its patient's name, IDs and birth date emptied (Type 2: present but empty)."""
    import pydicom

    ds = pydicom.dcmread(path)
    for keyword in _DICOM_PATIENT_TAGS:
        if keyword in ds:
            if keyword.endswith("Sequence"):
                del ds[keyword]
            else:
                ds.data_element(keyword).value = ""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
