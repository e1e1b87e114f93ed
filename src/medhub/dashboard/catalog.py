"""What a results folder holds, read-only: a ``run``, ``batch``, ``release``, ``compare`` or ``evaluation`` folder
as one catalog.

Every kind is served through the same case table, an SQLite table ``cases`` with the columns of the batch
store (:mod:`medhub.cohort.store`) that the dashboard shows: a batch is queried in its own ``batch.sqlite``
(opened read-only), the other kinds are loaded into an in-memory table once. Sorting, filtering and paging are
SQL, so a 10,000-case store answers a page in milliseconds.

Nothing here writes into the folder.
"""

from __future__ import annotations

import csv
import fcntl
import itertools
import json
import math
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medhub.cohort.batch import LOCK_NAME
from medhub.errors import InputError

#: Columns every catalog's case table has (a subset of the batch store's).
COLUMNS = ("case_id", "status", "reason_code", "message", "patient_id", "series_instance_uid", "agatston",
           "risk_category", "values_json", "outputs_json", "warnings_json", "input_json", "wall_s", "model_version")
#: Columns the case table can be sorted by; values are sorted by ``value:<name>``.
SORTABLE = ("case_id", "status", "reason_code", "patient_id", "agatston", "risk_category", "wall_s")
#: Columns the text filter searches.
SEARCHED = ("case_id", "patient_id", "reason_code", "message")
#: Keys hidden by ``--anonymize`` wherever they occur in an answer.
PATIENT_KEYS = frozenset({"patient_id", "patient_name", "patient_birth_date", "PatientID", "PatientName",
                          "PatientBirthDate"})
_AGATSTON_BINS = (0, 1, 10, 100, 400, 1000, math.inf)


class StoreConnection:
    """Read-only access to a batch store that writes nothing, not even SQLite's shared-memory file.

    A finished batch has nothing in its write-ahead log: the store is opened ``immutable``, which reads the file
    and nothing else. While a coordinator runs (it holds the batch lock) or left rows in the log (killed), the store
    is opened ``mode=ro`` instead, to see the newest rows; SQLite readers then take part in the ``-shm`` lock file.
    The connection is reopened when that changes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.live: bool | None = None
        self.connection: sqlite3.Connection | None = None

    def _live(self) -> bool:
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            return True
        lock = self.path.with_name(LOCK_NAME)
        if not lock.exists():
            return False
        with open(lock) as handle:  # a shared record lock only tests the coordinator's; nothing is written
            try:
                fcntl.lockf(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.lockf(handle, fcntl.LOCK_UN)
        return False

    def current(self) -> sqlite3.Connection:
        live = self._live()
        if self.connection is None or live != self.live:
            if self.connection is not None:
                self.connection.close()
            mode = "mode=ro" if live else "mode=ro&immutable=1"
            self.connection = sqlite3.connect(f"file:{self.path}?{mode}", uri=True, check_same_thread=False,
                                              timeout=30.0)
            self.connection.row_factory = sqlite3.Row  # as ResultsStore reads its rows
            self.live = live
        return self.connection


@dataclass
class CasePage:
    total: int
    rows: list[dict[str, Any]]


@dataclass
class Catalog:
    """A results folder as the dashboard sees it. Build it with :func:`open_catalog`."""

    folder: Path
    kind: str
    connection: sqlite3.Connection | StoreConnection
    table: str = "cases"
    where: str = "1"
    params: tuple = ()
    record: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def db(self) -> sqlite3.Connection:
        return self.connection.current() if isinstance(self.connection, StoreConnection) else self.connection

    # -- the case table ------------------------------------------------------------------------------------

    def query(self, *, offset: int = 0, limit: int = 50, sort: str = "case_id", descending: bool = False,
              text: str = "", status: str = "", text_fields: tuple[str, ...] = SEARCHED) -> CasePage:
        """One page of cases, sorted by a :data:`SORTABLE` column or ``value:<name>``, filtered by a substring
        of the ``text_fields`` (by default the case id, patient ID, reason and message), and by status."""
        if sort.startswith("value:"):
            order = "json_extract(values_json, ?)"
            order_params: tuple = (f'$."{sort[6:]}"',)
        elif sort in SORTABLE:
            order, order_params = sort, ()
        else:
            raise InputError(None, f"cannot sort by {sort!r}", code="bad-option")
        where, params = self.where, list(self.params)
        if text:
            fields = [f for f in text_fields if f in SEARCHED]
            where += " AND (" + " OR ".join(f"{f} LIKE ?" for f in fields) + ")"
            params += [f"%{text}%"] * len(fields)
        if status:
            where += " AND status = ?"
            params.append(status)
        direction = "DESC" if descending else "ASC"
        with self.lock:
            total = self.db().execute(f"SELECT COUNT(*) FROM {self.table} WHERE {where}", params).fetchone()[0]
            rows = self.db().execute(
                f"SELECT {', '.join(COLUMNS)} FROM {self.table} WHERE {where} "
                f"ORDER BY {order} IS NULL, {order} {direction}, case_id LIMIT ? OFFSET ?",
                [*params, *order_params, *order_params, max(1, min(limit, 500)), max(0, offset)]).fetchall()
        return CasePage(total=int(total), rows=[_decode(dict(zip(COLUMNS, r, strict=True))) for r in rows])

    def case(self, case_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db().execute(f"SELECT {', '.join(COLUMNS)} FROM {self.table} WHERE {self.where} AND case_id = ?",
                                  (*self.params, case_id)).fetchone()
        return None if row is None else _decode(dict(zip(COLUMNS, row, strict=True)))

    def case_ids(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db().execute(f"SELECT case_id FROM {self.table} WHERE {self.where} "
                                                  "ORDER BY case_id", self.params)]

    # -- the overview --------------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        with self.lock:
            statuses = dict(self.db().execute(f"SELECT status, COUNT(*) FROM {self.table} WHERE {self.where} "
                                            "GROUP BY status", self.params).fetchall())
            reasons = dict(self.db().execute(
                f"SELECT reason_code, COUNT(*) FROM {self.table} WHERE {self.where} AND status = 'failed' "
                "GROUP BY reason_code ORDER BY COUNT(*) DESC", self.params).fetchall())
            versions = dict(self.db().execute(
                f"SELECT model_version, COUNT(*) FROM {self.table} WHERE {self.where} AND model_version IS NOT NULL "
                "GROUP BY model_version", self.params).fetchall())
            scores = [r[0] for r in self.db().execute(f"SELECT agatston FROM {self.table} WHERE {self.where} AND "
                                                     "agatston IS NOT NULL", self.params)]
            categories = dict(self.db().execute(
                f"SELECT risk_category, COUNT(*) FROM {self.table} WHERE {self.where} AND risk_category IS NOT NULL "
                "GROUP BY risk_category", self.params).fetchall())
        out: dict[str, Any] = {
            "kind": self.kind, "folder": self.folder.name, "total": sum(statuses.values()), "statuses": statuses,
            "failures_by_reason": {k or "unknown": v for k, v in reasons.items()},
            "model": self.record.get("model", {}), "model_versions": versions,
        }
        if scores:
            out["risk_categories"] = dict(sorted(categories.items(), key=lambda kv: _category_order(kv[0])))
            bins = np.digitize(scores, _AGATSTON_BINS[1:-1])  # [0, 1), [1, 10), ... [1000, inf)
            counts = np.bincount(bins, minlength=len(_AGATSTON_BINS) - 1)
            out["agatston_histogram"] = [{"bin": label, "count": int(n)}
                                         for label, n in zip(_histogram_labels(), counts, strict=True)]
        if self.kind == "compare":
            out["compare"] = {k: self.record.get(k) for k in ("sources", "reference", "pairs", "unmatched", "options")}
        if self.kind == "survival":
            out["survival"] = {k: self.record.get(k) for k in ("n", "events", "settings", "cox", "concordance",
                                                               "logrank", "added_value")}
            out["survival"]["km_plot"] = "/files/km.png" if (self.folder / "km.png").is_file() else None
        if self.kind == "evaluation":
            out["evaluation"] = {k: self.record.get(k) for k in ("task_set", "submissions", "leaderboard",
                                                                  "skipped_tasks", "n_resamples")}
        return out


def _histogram_labels() -> list[str]:
    """Agatston bins as ``[low, high)`` intervals; the first holds exactly 0."""
    edges = _AGATSTON_BINS
    return ["0", *(f"{low:g}–{high:g}" for low, high in itertools.pairwise(edges[1:-1])), f"≥ {edges[-2]:g}"]


def _category_order(label: str | None) -> float:
    try:
        return float(str(label).split("-")[0].rstrip("+>= "))
    except ValueError:
        return math.inf


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for column in ("values_json", "outputs_json", "warnings_json", "input_json"):
        row[column.removesuffix("_json")] = json.loads(row.pop(column) or "null")
    return row


# ----------------------------------------------------------------------------------------------- opening


def open_catalog(folder: str | Path) -> Catalog:
    """The catalog of ``folder``, whichever kind it is; :class:`InputError` when it is none of them."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise InputError(folder, "no such folder", code="not-found")
    compare_record = _json(folder / "compare.json")
    if compare_record and compare_record.get("kind") == "medhub-compare":
        return _compare_catalog(folder, compare_record)
    evaluation_record = _json(folder / "evaluation.json")
    if evaluation_record and evaluation_record.get("kind") == "medhub-evaluation":
        return _evaluation_catalog(folder, evaluation_record)
    survival_record = _json(folder / "survival.json")
    if survival_record and survival_record.get("kind") == "medhub-survival":
        return _survival_catalog(folder, survival_record)
    if (folder / "batch.sqlite").is_file():
        return _batch_catalog(folder)
    if (folder / "release.json").is_file() and (folder / "metadata.csv").is_file():
        return _release_catalog(folder)
    run_record = _json(folder / "run.json")
    if run_record and "cases" in run_record:
        return _run_catalog(folder, run_record)
    raise InputError(folder, "not a medhub run, batch, release, compare, evaluation or survival folder (no "
                     "run.json, batch.sqlite, release.json, compare.json, evaluation.json or survival.json)",
                     code="not-a-results-folder")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _memory_table(rows: list[dict[str, Any]]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute(f"CREATE TABLE cases ({', '.join(COLUMNS)}, PRIMARY KEY (case_id))")
    db.executemany(f"INSERT OR REPLACE INTO cases VALUES ({', '.join('?' for _ in COLUMNS)})",
                   [tuple(row.get(c) for c in COLUMNS) for row in rows])
    return db


def _dumps(value: Any) -> str | None:
    from medhub.io.records import jsonable

    return None if value is None else json.dumps(jsonable(value))


def _run_catalog(folder: Path, record: dict[str, Any]) -> Catalog:
    model = record.get("model", {})
    rows = []
    for case in record["cases"]:
        values = case.get("values") or {}
        rows.append({
            "case_id": case["case_id"], "status": case["status"], "reason_code": case.get("reason_code"),
            "message": case.get("message"), "patient_id": None,
            "series_instance_uid": (case.get("input") or {}).get("series_instance_uid"),
            "agatston": values.get("agatston"), "risk_category": values.get("risk_category"),
            "values_json": _dumps(values),
            "outputs_json": _dumps({k: f"{case['case_id']}/{Path(v).name}" for k, v in
                                    (case.get("outputs") or {}).items()}),
            "warnings_json": _dumps(case.get("warnings")), "input_json": _dumps(case.get("input")),
            "wall_s": sum((case.get("timings_s") or {}).values()) or None, "model_version": model.get("version"),
        })
    card = _card_of(model.get("id"))
    return Catalog(folder=folder, kind="run", connection=_memory_table(rows), record={k: v for k, v in record.items()
                                                                             if k != "cases"}, card=card)


def _card_of(model_id: str | None) -> dict[str, Any] | None:
    if not model_id:
        return None
    try:
        from medhub.hub.registry import get_card

        return get_card(model_id).model_dump(mode="json", exclude_none=True)
    except Exception:  # a model not installed here: the dashboard still shows its results
        return None


def _batch_catalog(folder: Path) -> Catalog:
    from medhub.cohort.store import STORE_NAME, ResultsStore

    connection = StoreConnection(folder / STORE_NAME)
    run = ResultsStore(connection.path, connection.current()).current_run()
    if run is None:
        raise InputError(folder, "the batch store holds no run yet", code="empty-batch")
    # Shared by the server's worker threads, which the catalog's lock serialises.
    return Catalog(folder=folder, kind="batch", connection=connection, where="run_id = ?", params=(run.run_id,),
                   record={"model": {"id": run.model_id, "version": run.model_version,
                                     "weights_sha256": run.weights_sha256}, "run_id": run.run_id,
                           "source": run.source, "created_utc": run.created_utc, "provenance": run.provenance,
                           "output_dir": run.output_dir},
                   card=run.card or None)


def _release_catalog(folder: Path) -> Catalog:
    record = _json(folder / "release.json") or {}
    with (folder / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    id_columns = {"patient_id", "study_instance_uid", "series_instance_uid", "case_id", "status", "reason_code",
                  "message", "seg_file", "sr_file", "model_id", "model_version", "weights_sha256"}
    rows = []
    for row in table:
        values = {k: _number(v) for k, v in row.items() if k not in id_columns and v not in ("", None)}
        rows.append({
            "case_id": row.get("case_id"), "status": row.get("status"), "reason_code": row.get("reason_code") or None,
            "message": row.get("message") or None, "patient_id": row.get("patient_id"),
            "series_instance_uid": row.get("series_instance_uid"),
            "agatston": _number(row.get("agatston")) if row.get("agatston") else None,
            "risk_category": row.get("risk_category") or None, "values_json": _dumps(values),
            "outputs_json": _dumps({k: row[f"{k}_file"] for k in ("seg", "sr") if row.get(f"{k}_file")}),
            "warnings_json": None, "input_json": None, "wall_s": _number(row.get("wall_s")) or None,
            "model_version": row.get("model_version"),
        })
    return Catalog(folder=folder, kind="release", connection=_memory_table(rows), record=record,
                   card=record.get("card") or _card_of((record.get("model") or {}).get("id")))


def _number(text: Any) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _compare_catalog(folder: Path, record: dict[str, Any]) -> Catalog:
    per_case: dict[str, dict[str, float]] = {}
    metrics_csv = folder / "metrics.csv"
    if metrics_csv.is_file():
        with metrics_csv.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row["metric"] in ("dice", "hd95_mm"):
                    name = f"{row['source']} vs {row['reference']}: {row['segment_name']} {row['metric']}"
                    per_case.setdefault(row["case"], {})[name] = float(row["value"])
    failed = {f["case"]: f for f in record.get("failures", []) if f.get("case")}
    rows = []
    for case in record.get("cases", []):
        case_id = case["case"]
        status = "failed" if case_id in failed else ("ok" if case_id in per_case else "unmatched")
        rows.append({"case_id": case_id, "status": status, "reason_code": (failed.get(case_id) or {}).get("reason"),
                     "message": (failed.get(case_id) or {}).get("message"), "patient_id": None,
                     "series_instance_uid": None, "agatston": None, "risk_category": None,
                     "values_json": _dumps(per_case.get(case_id, {})),
                     "outputs_json": _dumps({}), "warnings_json": None,
                     "input_json": _dumps({"sources": case.get("sources"), "keys": case.get("keys")}),
                     "wall_s": None, "model_version": None})
    summary = []
    if (folder / "summary.csv").is_file():
        with (folder / "summary.csv").open(newline="", encoding="utf-8") as handle:
            summary = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    return Catalog(folder=folder, kind="compare", connection=_memory_table(rows), record={**record, "summary": summary})


def _survival_catalog(folder: Path, record: dict[str, Any]) -> Catalog:
    """``medhub survival``'s folder: one row per group (quartile or category) with its size, events, median
    survival and hazard ratio against the reference group."""
    hazards = {h["group"]: h for h in record.get("group_hazards") or []}
    rows = []
    for group in record.get("groups") or []:
        hazard = hazards.get(group["group"], {})
        values = {"n": group.get("n"), "events": group.get("events"), "median_survival": group.get("median_survival"),
                  "hr": hazard.get("hr"), "hr_low": hazard.get("hr_low"), "hr_high": hazard.get("hr_high"),
                  "p": hazard.get("p")}
        rows.append({"case_id": str(group["group"]), "status": "ok", "reason_code": None, "message": None,
                     "patient_id": None, "series_instance_uid": None, "agatston": None, "risk_category": None,
                     "values_json": _dumps({k: v for k, v in values.items() if v is not None}),
                     "outputs_json": _dumps({}), "warnings_json": None, "input_json": _dumps({}),
                     "wall_s": None, "model_version": None})
    return Catalog(folder=folder, kind="survival", connection=_memory_table(rows), record=record)


def _evaluation_catalog(folder: Path, record: dict[str, Any]) -> Catalog:
    """``medhub evaluate``'s folder: one row per submission, task and case (``cases.csv``)."""
    rows = []
    if (folder / "cases.csv").is_file():
        with (folder / "cases.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                values = {k: _number(row[k]) for k in ("prediction", "truth", "dice", "nsd", "mae") if row.get(k)}
                rows.append({"case_id": f"{row['submission']} / {row['task']} / {row['case']}",
                             "status": row["status"], "reason_code": row["reason"] or None,
                             "message": row["message"] or None, "patient_id": None, "series_instance_uid": None,
                             "agatston": None, "risk_category": None, "values_json": _dumps(values),
                             "outputs_json": _dumps({}), "warnings_json": None,
                             "input_json": _dumps({k: row[k] for k in ("submission", "task", "case")}),
                             "wall_s": _number(row.get("seconds") or None), "model_version": None})
    return Catalog(folder=folder, kind="evaluation", connection=_memory_table(rows), record=record)
