"""``release(run_dir, to)``: a batch run as a self-describing dataset, in the spirit of DeepCAC2's release.

The release folder holds::

    scans/<patient>/<study-uid>/<series-uid>/seg.dcm, sr.dcm   per-scan DICOM SEG and SR (successful scans)
    metadata.parquet, metadata.csv                              one row per scan, failures included
    <table>.parquet, <table>.csv                                the model's per-scan tables (e.g. cac's lesions),
                                                                concatenated, with the scan's identifiers
    data_dictionary.csv, data_dictionary.md                     every column: type, unit, meaning; conventions
    summary.json, summary.md                                    counts per risk category, failures by reason
    release.json                                                model, weights sha256, run, sample, time
    SHA256SUMS                                                  `sha256sum -c SHA256SUMS` checks every file

It is built in a hidden staging folder beside ``to`` and renamed into place when complete, so a reader never sees
a half-written release. ``sample=N`` keeps N patients drawn at random with ``seed`` (every scan of each drawn
patient): the same store and seed give the same subset.
"""

from __future__ import annotations

import random
import re
import shutil
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medhub.cohort.store import FINAL_STATES, OK, ResultsStore, RunInfo
from medhub.errors import InputError, OutputError
from medhub.hub.card import sha256_file
from medhub.io import records
from medhub.io.files import make_staging_dir
from medhub.io.tree import walk_files

CHECKSUMS_NAME = "SHA256SUMS"

#: Columns every release has, before the model's values: (name, type, unit, description).
_ID_COLUMNS: list[tuple[str, str, str, str]] = [
    ("patient_id", "string", "", "PatientID of the source series, as in the input files"),
    ("study_instance_uid", "string", "", "StudyInstanceUID of the source series"),
    ("series_instance_uid", "string", "", "SeriesInstanceUID of the source series (the scan)"),
    ("case_id", "string", "", "Case id in the batch (the output folder name)"),
    ("status", "string", "", "ok: the model produced results; failed: see reason_code and message"),
    ("reason_code", "string", "", "Machine-readable failure reason (empty when ok), e.g. heart-not-found, timeout"),
    ("message", "string", "", "One-line failure message naming the file or series (empty when ok)"),
]
#: The columns that identify a scan (patient, study, series, case); they lead every row of the per-scan tables.
_SCAN_ID_COLUMNS = _ID_COLUMNS[:4]
_TAIL_COLUMNS: list[tuple[str, str, str, str]] = [
    ("seg_file", "string", "", "DICOM SEG of this scan, relative to the release folder (empty if none)"),
    ("sr_file", "string", "", "DICOM SR of this scan, relative to the release folder (empty if none)"),
    ("model_id", "string", "", "Model that produced the row"),
    ("model_version", "string", "", "Model version"),
    ("weights_sha256", "string", "", "sha256 of the model weights file (empty for a model without weights)"),
    ("load_s", "float", "s", "Time to read and check the input"),
    ("predict_s", "float", "s", "Model inference time"),
    ("write_s", "float", "s", "Time to write the outputs"),
    ("wall_s", "float", "s", "Wall time of the case in its worker"),
    ("cpu_s", "float", "s", "CPU time of the case (all threads of its worker process)"),
    ("overhead_s", "float", "s", "Time the batch backend added to the case (hand-out and return of the result)"),
    ("peak_rss_mib", "float", "MiB", "Peak resident memory of the worker process during the case"),
    ("finished_utc", "string", "ISO 8601 UTC", "When the case finished"),
]


@dataclass
class ReleaseSummary:
    """Where the release went and what it holds."""

    folder: Path
    scans: int
    patients: int
    ok: int
    failed: int
    files: int
    sampled_from: int | None


def _safe(text: str, fallback: str) -> str:
    """A path component from an identifier: UIDs pass unchanged; anything else is made file-name safe."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text or "").strip("._")
    return cleaned or fallback


def _value_columns(run: RunInfo, rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """The model's values as columns, in card order, with the card's units (``{text}``-style UCUM annotations
    mean "no physical unit"); values a card does not list follow, without unit."""
    specs = (run.card.get("outputs") or {}).get("values") or []
    seen = {name for row in rows for name in (row.get("values") or {})}
    columns = []
    for spec in specs:
        kind = "float"
        for row in rows:
            value = (row.get("values") or {}).get(spec["name"])
            if value is not None:
                kind = "string" if isinstance(value, str) else "float"
                break
        columns.append((spec["name"], kind, spec.get("unit", ""), " ".join(str(spec.get("description") or
                        spec.get("concept", {}).get("meaning", "")).split())))
    listed = {c[0] for c in columns}
    columns += [(name, "string", "", "model output not described by its card") for name in sorted(seen - listed)]
    return columns


def _sample(rows: list[dict[str, Any]], sample: int | None, seed: int) -> list[dict[str, Any]]:
    if sample is None:
        return rows
    if sample < 1:
        raise InputError(None, f"--sample must be at least 1 (got {sample})", code="bad-option")
    patients = sorted({row["patient_id"] or row["case_id"] for row in rows})
    chosen = set(random.Random(seed).sample(patients, min(sample, len(patients))))
    return [row for row in rows if (row["patient_id"] or row["case_id"]) in chosen]


def _missing_output(path: Path, row: dict[str, Any]) -> InputError:
    return InputError(path, f"output of case {row['case_id']} is missing; the run folder was changed after the "
                      "batch", code="missing-output")


def _copy_scan_files(row: dict[str, Any], case_folder: Path, staging: Path, used: set[str]) -> dict[str, str]:
    """Copy the scan's SEG and SR from ``case_folder`` into ``scans/<patient>/<study>/<series>/``; return their
    paths relative to the release."""
    outputs = row.get("outputs") or {}
    # By name inside the case folder, not by the recorded absolute path: the batch folder may have moved.
    files = {kind: case_folder / Path(outputs[kind]).name for kind in ("seg", "sr") if kind in outputs}
    if row["status"] != OK or not files:
        return {}
    folder = "/".join(("scans", _safe(row["patient_id"], "unknown-patient"),
                       _safe(row["study_instance_uid"], "unknown-study"),
                       _safe(row["series_instance_uid"], _safe(row["case_id"], "case"))))
    if folder in used:  # the same series twice in one run (two manifest rows): keep both, apart
        folder = f"{folder}_{_safe(row['case_id'], 'case')}"
    used.add(folder)
    copied = {}
    for kind, source in files.items():
        if not source.is_file():
            raise _missing_output(source, row)
        target = staging / folder / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied[kind] = f"{folder}/{source.name}"
    return copied


def _table_names(rows: list[dict[str, Any]]) -> list[str]:
    """Names of the per-scan tables (``Prediction.tables``) that successful scans wrote."""
    from medhub.hub.runner import OUTPUT_KINDS

    return sorted({name for row in rows if row["status"] == OK for name in (row.get("outputs") or {})
                   if name not in OUTPUT_KINDS})


def _gather_table(name: str, rows: list[dict[str, Any]], cases_dir: Path
                  ) -> tuple[list[tuple[str, str, str, str]], list[dict[str, Any]]]:
    """One table from every successful scan's ``cases_dir/<case-id>/<name>.csv``, in the order of ``rows``, each
    row prefixed with the scan's identifiers. A column is float when every non-empty value of it parses as a
    number, else string."""
    import csv

    header: list[str] = []
    table_rows: list[dict[str, Any]] = []
    for row in rows:
        if row["status"] != OK or name not in (row.get("outputs") or {}):
            continue
        path = cases_dir / row["case_id"] / f"{name}.csv"
        if not path.is_file():
            raise _missing_output(path, row)
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header += [c for c in reader.fieldnames or [] if c not in header]
            ids = {k: row.get(k) or "" for k, *_ in _SCAN_ID_COLUMNS}
            table_rows += [{**ids, **record} for record in reader]

    def kind(column: str) -> str:
        try:
            [float(r[column]) for r in table_rows if r.get(column) not in (None, "")]
        except ValueError:
            return "string"
        return "float"

    columns = _SCAN_ID_COLUMNS + [(c, kind(c), "", f"column of the model's per-scan {name} table")
                                       for c in header]
    for record in table_rows:
        for column, k, *_ in columns:
            if k == "float" and record.get(column) not in (None, ""):
                record[column] = float(record[column])
    return columns, table_rows


def _write_parquet(path: Path, table_rows: list[dict[str, Any]], columns: list[tuple[str, str, str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "float": pa.float64()}
    schema = pa.schema([pa.field(name, types[kind], metadata={"unit": unit, "description": description})
                        for name, kind, unit, description in columns])
    arrays = []
    for name, kind, _, _ in columns:
        values = [row.get(name) for row in table_rows]
        if kind == "float":
            values = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in values]
        else:
            values = [None if v is None else str(v) for v in values]
        arrays.append(pa.array(values, type=types[kind]))
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def _summary(rows: list[dict[str, Any]], value_names: set[str]) -> dict[str, Any]:
    ok_rows = [r for r in rows if r["status"] == OK]
    summary: dict[str, Any] = {
        "scans": len(rows),
        "patients": len({r["patient_id"] or r["case_id"] for r in rows}),
        "ok": len(ok_rows),
        "failed": len(rows) - len(ok_rows),
        "failures_by_reason": dict(Counter(r["reason_code"] or "unknown" for r in rows if r["status"] != OK)
                                   .most_common()),
    }
    if "risk_category" in value_names:
        summary["scans_per_risk_category"] = dict(sorted(Counter(
            str((r["values"] or {}).get("risk_category")) for r in ok_rows).items()))
    if "agatston" in value_names:
        scores = sorted(float(v) for r in ok_rows if isinstance(v := (r["values"] or {}).get("agatston"),
                                                                   (int, float)))
        if scores:
            summary["agatston"] = {"median": statistics.median(scores), "min": scores[0], "max": scores[-1],
                                   "zero": sum(s == 0 for s in scores)}
    return summary


def _dictionary_markdown(columns: list[tuple[str, str, str, str]], run: RunInfo, conventions: list[str],
                         tables: dict[str, int] | None = None) -> str:
    lines = [f"# Data dictionary: {run.model_id} {run.model_version}", "",
             "`metadata.parquet` and `metadata.csv` hold one row per scan. Units are UCUM; a unit in braces "
             "(`{score}`, `{category}`) is a count or label without a physical unit.", ""]
    for name, n in (tables or {}).items():
        lines += [f"`{name}.parquet` and `{name}.csv` ({n} rows) concatenate the model's per-scan `{name}` table "
                  "(see the model's documentation), each row led by its scan's patient, study, series and case id.",
                  ""]
    lines += ["| column | type | unit | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| {n} | {k} | {u} | {d} |" for n, k, u, d in columns]
    category = next((d for n, _, _, d in columns if n == "risk_category"), None)
    lines += ["", "## Conventions", ""]
    if category:
        lines.append(f"- **risk_category**: {category}")
    lines += [f"- **scoring convention** (as the model reports it): {c}" for c in conventions]
    if not category and not conventions:
        lines.append("- see the model card in `release.json`")
    return "\n".join(lines) + "\n"


def _summary_markdown(summary: dict[str, Any], run: RunInfo) -> str:
    lines = [f"# Summary: {run.model_id} {run.model_version}", "",
             f"- scans: {summary['scans']} ({summary['patients']} patients)",
             f"- ok: {summary['ok']}", f"- failed: {summary['failed']}", ""]
    if "scans_per_risk_category" in summary:
        lines += ["| risk category | scans |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in summary["scans_per_risk_category"].items()] + [""]
    if summary["failures_by_reason"]:
        lines += ["| failure reason | scans |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in summary["failures_by_reason"].items()] + [""]
    return "\n".join(lines)


def write_checksums(folder: Path) -> Path:
    """``SHA256SUMS`` for every file under ``folder`` (sorted, ``sha256sum -c`` format, paths relative)."""
    files = sorted(p for p in walk_files(folder).files if p.name != CHECKSUMS_NAME)
    text = "".join(f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)
    target = folder / CHECKSUMS_NAME
    target.write_text(text, encoding="utf-8")
    return target


def verify_checksums(folder: str | Path) -> list[str]:
    """Problems found checking ``folder`` against its ``SHA256SUMS`` (empty: every file matches, and no file is
    unlisted)."""
    folder = Path(folder)
    problems, listed = [], set()
    for line in (folder / CHECKSUMS_NAME).read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        listed.add(name)
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name}: checksum differs")
    extra = {p.relative_to(folder).as_posix() for p in walk_files(folder).files} - listed - {CHECKSUMS_NAME}
    problems += [f"{name}: not listed" for name in sorted(extra)]
    return problems


def release(run_dir: str | Path, to: str | Path, sample: int | None = None, seed: int = 0,
            run_id: int | None = None) -> ReleaseSummary:
    """Write the dataset release of batch output ``run_dir`` (its current run, or ``run_id``) to ``to``.

    Refuses a run with unfinished cases (finish it with ``medhub batch`` first) and an existing ``to``.
    """
    to = Path(to)
    if to.exists():
        raise OutputError(to, "release folder exists; choose a new --to (a release is never overwritten)",
                          code="exists")
    store = ResultsStore.open_existing(run_dir)
    try:
        run = store.run(run_id) if run_id is not None else store.current_run()
        if run is None:
            raise InputError(run_dir, "the results store holds no run", code="not-a-batch")
        all_rows = store.rows(run)
    finally:
        store.close()
    unfinished = [r["case_id"] for r in all_rows if r["status"] not in FINAL_STATES]
    if unfinished:
        raise InputError(run_dir, f"run {run.run_id} has {len(unfinished)} unfinished case(s) (e.g. "
                         f"{unfinished[0]}); finish it with the same `medhub batch` command first",
                         code="run-unfinished")
    rows = _sample(all_rows, sample, seed)
    try:
        to.parent.mkdir(parents=True, exist_ok=True)
        staging = make_staging_dir(to.parent, to.name)
    except OSError as e:
        raise OutputError(to, f"cannot write the release ({e.strerror or e})") from e
    try:
        summary = _build(staging, run, rows, run_dir, sample, seed, len(all_rows))
        staging.rename(to)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(to, f"cannot write the release ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.folder = to
    return summary


def _build(staging: Path, run: RunInfo, rows: list[dict[str, Any]], run_dir: str | Path, sample: int | None,
           seed: int, population: int) -> ReleaseSummary:
    value_columns = _value_columns(run, rows)
    columns = _ID_COLUMNS + value_columns + _TAIL_COLUMNS
    used: set[str] = set()
    table_rows = []
    cases_dir = Path(run_dir) / run.output_dir
    rows = sorted(rows, key=lambda r: (r["patient_id"] or "", r["study_instance_uid"] or "",
                                       r["series_instance_uid"] or "", r["case_id"]))
    for row in rows:
        copied = _copy_scan_files(row, cases_dir / row["case_id"], staging, used)
        table_rows.append({**{k: row.get(k) or "" for k, *_ in _ID_COLUMNS}, **(row["values"] or {}),
                           "seg_file": copied.get("seg", ""), "sr_file": copied.get("sr", ""),
                           **{k: row.get(k) for k, *_ in _TAIL_COLUMNS if k not in ("seg_file", "sr_file")}})
    names = [c[0] for c in columns]
    _write_parquet(staging / "metadata.parquet", table_rows, columns)
    records.write_csv(staging / "metadata.csv", table_rows, columns=names)
    records.write_csv(staging / "data_dictionary.csv",
                      [dict(zip(("column", "type", "unit", "description"), c, strict=True)) for c in columns])
    tables = {}
    for name in _table_names(rows):
        table_columns, table_rows = _gather_table(name, rows, cases_dir)
        _write_parquet(staging / f"{name}.parquet", table_rows, table_columns)
        records.write_csv(staging / f"{name}.csv", table_rows, columns=[c[0] for c in table_columns])
        tables[name] = len(table_rows)
    conventions = sorted({str(r["values"]["scoring_convention"]) for r in rows
                          if r["values"] and "scoring_convention" in r["values"]})
    (staging / "data_dictionary.md").write_text(_dictionary_markdown(columns, run, conventions, tables),
                                                encoding="utf-8")
    summary = _summary(rows, {c[0] for c in value_columns})
    records.write_json(staging / "summary.json", summary)
    (staging / "summary.md").write_text(_summary_markdown(summary, run), encoding="utf-8")
    records.write_json(staging / "release.json", {
        "model": {"id": run.model_id, "version": run.model_version, "weights_sha256": run.weights_sha256,
                  "card": run.card},
        "run": {"run_id": run.run_id, "source": run.source, "created_utc": run.created_utc,
                "batch_output": str(Path(run_dir).resolve()), "provenance": run.provenance},
        "sample": None if sample is None else {"patients": sample, "seed": seed, "scans_in_run": population,
                                               "method": "random.Random(seed).sample of the sorted patient IDs"},
        "created_utc": records.utc_now(),
    })
    checksums = write_checksums(staging)
    return ReleaseSummary(folder=staging, scans=summary["scans"], patients=summary["patients"], ok=summary["ok"],
                          failed=summary["failed"], files=len(checksums.read_text().splitlines()),
                          sampled_from=population if sample is not None else None)
