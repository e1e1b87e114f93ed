"""The results store of a batch: one SQLite file, ``OUTPUT/batch.sqlite``.

Why SQLite (see ``docs/cohort.md`` for the comparison with DuckDB over Parquet): the store's job is many small,
durable, transactional updates from one process (a case finished: one row changes) that must survive ``kill -9``
at any instant. SQLite in WAL mode does exactly that, ships with Python, and any tool reads it. Parquet files are
immutable column chunks, so per-case updates would mean a new file per case or rewriting; the release exports
Parquet for analysis instead.

Rules that keep it trustworthy:

* only the coordinator process writes (workers return values, they never open the store);
* every change is one ``BEGIN IMMEDIATE`` transaction, with ``synchronous=FULL`` so a committed case survives
  a power cut too, not only a killed process;
* a ``runs`` table pins the model id, version and weights sha256; the cases of a run are never mixed with those
  of another model version (``--new-run`` starts a new run with its own output folder).

Times are UTC ISO 8601 strings; durations are seconds; memory is MiB.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medhub.errors import InputError
from medhub.io.records import jsonable, utc_now  # the project's one numpy/NaN -> JSON conversion

STORE_NAME = "batch.sqlite"
SCHEMA_VERSION = 1

#: Case states. ``ok`` and ``failed`` are final; ``running`` left behind by a killed coordinator is reset to
#: ``pending`` on the next start.
PENDING, RUNNING, OK, FAILED = "pending", "running", "ok", "failed"
FINAL_STATES = (OK, FAILED)

#: Prediction values copied into their own columns (when the model produces them), for SQL without JSON.
PROMOTED_VALUES = ("agatston", "risk_category")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id          INTEGER PRIMARY KEY,
    model_id        TEXT NOT NULL,
    model_version   TEXT NOT NULL,
    weights_sha256  TEXT,
    medhub_version  TEXT,
    output_dir      TEXT NOT NULL,   -- relative to the store's folder, e.g. 'run-1'
    source          TEXT,            -- the --input root or --manifest path of the run's first start
    created_utc     TEXT NOT NULL,
    superseded_utc  TEXT,            -- set when --new-run started the next run
    card_json       TEXT,            -- the model card, so a release knows units without the model installed
    provenance_json TEXT
);
CREATE TABLE IF NOT EXISTS cases (
    run_id              INTEGER NOT NULL REFERENCES runs(run_id),
    case_id             TEXT NOT NULL,
    source_path         TEXT,
    patient_id          TEXT,
    study_instance_uid  TEXT,
    series_instance_uid TEXT,
    status              TEXT NOT NULL CHECK (status IN ('{PENDING}', '{RUNNING}', '{OK}', '{FAILED}')),
    reason_code         TEXT,
    message             TEXT,
    output_dir          TEXT,
    outputs_json        TEXT,
    values_json         TEXT,
    agatston            REAL,
    risk_category       TEXT,
    warnings_json       TEXT,
    input_json          TEXT,
    load_s              REAL,
    predict_s           REAL,
    write_s             REAL,
    wall_s              REAL,
    cpu_s               REAL,
    overhead_s          REAL,            -- coordinator-seen time minus wall_s: the backend's cost per case
    peak_rss_mib        REAL,
    model_id            TEXT,
    model_version       TEXT,
    weights_sha256      TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    worker              TEXT,
    started_utc         TEXT,
    finished_utc        TEXT,
    PRIMARY KEY (run_id, case_id)
);
CREATE INDEX IF NOT EXISTS cases_status ON cases (run_id, status);
CREATE TABLE IF NOT EXISTS attempts (
    run_id       INTEGER NOT NULL,
    case_id      TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    started_utc  TEXT NOT NULL,
    finished_utc TEXT,
    status       TEXT,               -- NULL while running, or if the coordinator died during the attempt
    reason_code  TEXT,
    worker       TEXT,
    PRIMARY KEY (run_id, case_id, attempt)
);
"""


@dataclass(frozen=True)
class RunInfo:
    """One row of ``runs``."""

    run_id: int
    model_id: str
    model_version: str
    weights_sha256: str | None
    output_dir: str
    source: str | None
    created_utc: str
    card: dict[str, Any]
    provenance: dict[str, Any]


def _dumps(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=False)


class ResultsStore:
    """The SQLite results store in ``folder``; open it with :meth:`create_or_open` or :meth:`open_existing`."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def create_or_open(cls, folder: str | Path) -> ResultsStore:
        """Open (creating if needed) the store of batch output ``folder`` for writing, by the coordinator."""
        path = Path(folder) / STORE_NAME
        db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        store = cls(path, db)
        with store.transaction():
            # One statement at a time: executescript() would commit the open transaction first.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return store

    @classmethod
    def open_existing(cls, folder: str | Path) -> ResultsStore:
        """Open the store of an existing batch output ``folder`` for reading."""
        path = Path(folder) / STORE_NAME
        if not path.is_file():
            raise InputError(folder, f"no batch results store ({STORE_NAME}); is this a `medhub batch` output "
                             "folder?", code="not-a-batch")
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30.0)
        db.row_factory = sqlite3.Row
        return cls(path, db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front, so it cannot fail half-way
        for lack of it."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- runs ----------------------------------------------------------------------------------------------

    def current_run(self) -> RunInfo | None:
        """The newest run not superseded by ``--new-run``, or ``None`` for a new store."""
        row = self._db.execute("SELECT * FROM runs WHERE superseded_utc IS NULL ORDER BY run_id DESC LIMIT 1"
                               ).fetchone()
        return None if row is None else self._run_info(row)

    def run(self, run_id: int) -> RunInfo:
        row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise InputError(self.path, f"no run {run_id} in this store", code="not-found")
        return self._run_info(row)

    @staticmethod
    def _run_info(row: sqlite3.Row) -> RunInfo:
        return RunInfo(run_id=row["run_id"], model_id=row["model_id"], model_version=row["model_version"],
                       weights_sha256=row["weights_sha256"], output_dir=row["output_dir"], source=row["source"],
                       created_utc=row["created_utc"], card=json.loads(row["card_json"] or "{}"),
                       provenance=json.loads(row["provenance_json"] or "{}"))

    def start_run(self, *, model_id: str, model_version: str, weights_sha256: str | None, medhub_version: str,
                  source: str, card: dict[str, Any], provenance: dict[str, Any]) -> RunInfo:
        """Create a new run (superseding the current one, if any) with its own output folder ``run-<id>``."""
        with self.transaction() as db:
            now = utc_now()
            db.execute("UPDATE runs SET superseded_utc = ? WHERE superseded_utc IS NULL", (now,))
            next_id = db.execute("SELECT COALESCE(MAX(run_id), 0) + 1 FROM runs").fetchone()[0]
            db.execute(
                "INSERT INTO runs (run_id, model_id, model_version, weights_sha256, medhub_version, output_dir, "
                "source, created_utc, card_json, provenance_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (next_id, model_id, model_version, weights_sha256, medhub_version, f"run-{next_id}", source, now,
                 _dumps(card), _dumps(provenance)))
        return self.run(next_id)

    # -- cases ---------------------------------------------------------------------------------------------

    def add_cases(self, run: RunInfo, cases: Iterable[dict[str, Any]]) -> int:
        """Insert cases not yet in ``run`` as pending (known ones keep their state); return how many were new.

        Each item has ``case_id`` and optionally ``source_path``, ``patient_id``, ``study_instance_uid``,
        ``series_instance_uid``.
        """
        rows = [(run.run_id, c["case_id"], c.get("source_path"), c.get("patient_id"), c.get("study_instance_uid"),
                 c.get("series_instance_uid"), PENDING, run.model_id, run.model_version, run.weights_sha256)
                for c in cases]
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO cases (run_id, case_id, source_path, patient_id, study_instance_uid, "
                "series_instance_uid, status, model_id, model_version, weights_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return db.total_changes - before

    def reset_interrupted(self, run: RunInfo) -> int:
        """Cases left ``running`` by a coordinator that died go back to pending; return how many."""
        with self.transaction() as db:
            cursor = db.execute("UPDATE cases SET status = ?, worker = NULL WHERE run_id = ? AND status = ?",
                                (PENDING, run.run_id, RUNNING))
            db.execute("UPDATE attempts SET status = 'interrupted', finished_utc = ? "
                       "WHERE run_id = ? AND status IS NULL", (utc_now(), run.run_id))
            return cursor.rowcount

    def reset_failed(self, run: RunInfo) -> int:
        """``--retry-failed``: failed cases go back to pending (their attempt count is kept)."""
        with self.transaction() as db:
            return db.execute("UPDATE cases SET status = ? WHERE run_id = ? AND status = ?",
                              (PENDING, run.run_id, FAILED)).rowcount

    def statuses(self, run: RunInfo) -> dict[str, str]:
        """case id -> status for every case of ``run``."""
        rows = self._db.execute("SELECT case_id, status FROM cases WHERE run_id = ?", (run.run_id,))
        return {r["case_id"]: r["status"] for r in rows}

    def mark_running(self, run: RunInfo, case_id: str, worker: str) -> int:
        """Record that a case was handed to a worker; return its attempt number (1 for the first)."""
        now = utc_now()
        with self.transaction() as db:
            db.execute("UPDATE cases SET status = ?, attempts = attempts + 1, worker = ?, started_utc = ? "
                       "WHERE run_id = ? AND case_id = ?", (RUNNING, worker, now, run.run_id, case_id))
            attempt = db.execute("SELECT attempts FROM cases WHERE run_id = ? AND case_id = ?",
                                 (run.run_id, case_id)).fetchone()[0]
            db.execute("INSERT INTO attempts (run_id, case_id, attempt, started_utc, worker) VALUES (?, ?, ?, ?, ?)",
                       (run.run_id, case_id, attempt, now, worker))
        return attempt

    def record_outcome(self, run: RunInfo, outcome: dict[str, Any]) -> None:
        """Store a finished case (the dict :func:`medhub.cohort.worker.execute_task` returns), in one
        transaction with its attempt row."""
        values = outcome.get("values") or {}
        timings = outcome.get("timings_s") or {}
        identity = outcome.get("identity") or {}
        now = outcome.get("finished_utc") or utc_now()
        promoted = [values.get(name) for name in PROMOTED_VALUES]
        with self.transaction() as db:
            db.execute(
                "UPDATE cases SET status = ?, reason_code = ?, message = ?, output_dir = ?, outputs_json = ?, "
                "values_json = ?, agatston = ?, risk_category = ?, warnings_json = ?, input_json = ?, "
                "load_s = ?, predict_s = ?, write_s = ?, wall_s = ?, cpu_s = ?, overhead_s = ?, peak_rss_mib = ?, "
                "finished_utc = ?, "
                "patient_id = COALESCE(NULLIF(?, ''), patient_id), "
                "study_instance_uid = COALESCE(NULLIF(?, ''), study_instance_uid), "
                "series_instance_uid = COALESCE(NULLIF(?, ''), series_instance_uid) "
                "WHERE run_id = ? AND case_id = ?",
                (outcome["status"], outcome.get("reason_code"), outcome.get("message"), outcome.get("output_dir"),
                 _dumps(outcome.get("outputs") or {}), _dumps(values),
                 promoted[0] if isinstance(promoted[0], (int, float)) else None,
                 None if promoted[1] is None else str(promoted[1]),
                 _dumps(outcome.get("warnings") or []), _dumps(outcome.get("input") or {}),
                 timings.get("load"), timings.get("predict"), timings.get("write"), outcome.get("wall_s"),
                 outcome.get("cpu_s"), outcome.get("overhead_s"), outcome.get("peak_rss_mib"), now,
                 identity.get("patient_id", ""), identity.get("study_instance_uid", ""),
                 identity.get("series_instance_uid", ""), run.run_id, outcome["case_id"]))
            db.execute("UPDATE attempts SET finished_utc = ?, status = ?, reason_code = ? WHERE run_id = ? AND "
                       "case_id = ? AND attempt = (SELECT attempts FROM cases WHERE run_id = ? AND case_id = ?)",
                       (now, outcome["status"], outcome.get("reason_code"), run.run_id, outcome["case_id"],
                        run.run_id, outcome["case_id"]))

    # -- reading -------------------------------------------------------------------------------------------

    def counts(self, run: RunInfo) -> dict[str, int]:
        """Number of cases per status (every status present, zero included)."""
        counts = dict.fromkeys((PENDING, RUNNING, OK, FAILED), 0)
        for row in self._db.execute("SELECT status, COUNT(*) AS n FROM cases WHERE run_id = ? GROUP BY status",
                                    (run.run_id,)):
            counts[row["status"]] = row["n"]
        return counts

    def failures_by_reason(self, run: RunInfo) -> dict[str, int]:
        rows = self._db.execute("SELECT reason_code, COUNT(*) AS n FROM cases WHERE run_id = ? AND status = ? "
                                "GROUP BY reason_code ORDER BY n DESC, reason_code", (run.run_id, FAILED))
        return {r["reason_code"] or "unknown": r["n"] for r in rows}

    def rows(self, run: RunInfo) -> list[dict[str, Any]]:
        """Every case of ``run`` as a dict, JSON columns decoded, ordered by case id."""
        decoded = []
        for row in self._db.execute("SELECT * FROM cases WHERE run_id = ? ORDER BY case_id", (run.run_id,)):
            item = dict(row)
            for column in ("outputs_json", "values_json", "warnings_json", "input_json"):
                item[column.removesuffix("_json")] = json.loads(item.pop(column) or "null")
            decoded.append(item)
        return decoded

    def attempts(self, run: RunInfo) -> list[dict[str, Any]]:
        """Every attempt of ``run``: a case handed to a worker, and how it ended."""
        rows = self._db.execute("SELECT * FROM attempts WHERE run_id = ? ORDER BY started_utc, case_id, attempt",
                                (run.run_id,))
        return [dict(r) for r in rows]
