"""``run_comparison``: every source on every case of an input, compared against a reference or pairwise.

Outputs in ``OUTPUT/`` (each written atomically):

* ``metrics.csv``: tidy, one row per case x source x reference x segment x metric (``value``, ``unit``,
  ``pred_empty``, ``ref_empty``);
* ``summary.csv``: per source x reference x segment x metric: ``n``, mean, SD, median, min, max and the 95 %
  percentile-bootstrap CI of the mean (2,000 resamples over cases, seed 0);
* ``values.csv`` / ``values_summary.csv``: scalar outputs that both sides report (e.g. a lung volume, an Agatston
  score): per case the two values and their difference; per source x reference x value the mean difference,
  Bland–Altman limits, Pearson r, Spearman ρ and ICC(2,1) (:mod:`medhub.metrics.agreement`);
* ``compare.json``: the provenance record: sources (model versions and weights hashes, paths), options,
  unmatched cases and segments, failures, package versions, time;
* ``report.html``: a standalone report (:mod:`medhub.compare.report`);
* ``sources/<model id>/``: the runs of hub models, reused when rerun with the same model version and weights.

Metric definitions and the values given for empty masks are in :mod:`medhub.metrics.segmentation`.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medhub import __version__
from medhub.compare.sources import ModelSource, Segment, Source, SourceCase, case_name, parse_source
from medhub.errors import InputError, MedhubError
from medhub.hub.cases import Case, discover_cases
from medhub.io import records
from medhub.io.files import ensure_writable_dir
from medhub.metrics.agreement import paired_agreement
from medhub.metrics.bootstrap import summarize
from medhub.metrics.segmentation import DEFAULT_TOLERANCE_MM, SEGMENTATION_METRICS, segmentation_metrics

METRIC_COLUMNS = ("case", "source", "reference", "segment", "segment_name", "metric", "value", "unit", "pred_empty",
                  "ref_empty")
SUMMARY_COLUMNS = ("source", "reference", "segment", "segment_name", "metric", "unit", "n", "mean", "sd", "median",
                   "min", "max", "ci_low", "ci_high")


@dataclass
class Comparison:
    """What :func:`run_comparison` found and wrote."""

    output: Path
    sources: list[Source]
    reference: Source | None
    pairs: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    value_rows: list[dict[str, Any]]
    value_summary: list[dict[str, Any]]
    cases: list[dict[str, Any]] = field(default_factory=list)
    unmatched: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    record_path: Path | None = None
    report_path: Path | None = None
    #: case id -> (the input case, its match in each source): what the report needs to draw a case again.
    matches: dict[str, tuple[Case, dict[str, SourceCase | None]]] = field(default_factory=dict, repr=False)


def _case_keys(case: Case, pattern: str | None) -> tuple[str, ...]:
    keys = [case.series.uid] if case.series is not None else []
    keys.append(case_name(case.path if case.series is None else case.id, pattern))
    return tuple(keys)


def _index(source_cases: list[SourceCase]) -> dict[str, SourceCase]:
    index: dict[str, SourceCase] = {}
    for source_case in source_cases:
        for key in source_case.keys:
            index.setdefault(key, source_case)
    return index


def run_comparison(
    sources: Sequence[str], data: str | Path, output: str | Path, *, reference: str | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM, case_pattern: str | None = None, report: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> Comparison:
    """Compare ``sources`` (see :func:`medhub.compare.sources.parse_source`) on every case under ``data``.

    With ``reference`` each source is compared with it; without, every pair of sources is (the first of a pair
    plays the prediction). ``case_pattern`` is a regular expression whose first group names a case in file names
    (e.g. ``'^(\\d+)_'`` matches ``0187_ct.nrrd`` with ``0187_labels.nrrd``). Raises :class:`MedhubError` for what
    stops the whole comparison (unknown source, no input, too few sources); a case or source that fails on one
    case is listed in ``failures`` and the others go on.
    """
    data, output = Path(data), ensure_writable_dir(Path(output).resolve())
    if tolerance_mm <= 0:
        raise InputError(None, f"--tolerance-mm must be positive (got {tolerance_mm:g})", code="bad-option")
    parsed = [parse_source(spec, data=data, output=output, case_pattern=case_pattern) for spec in sources]
    ref = parse_source(reference, data=data, output=output, case_pattern=case_pattern) if reference else None
    names = [s.name for s in parsed] + ([ref.name] if ref else [])
    if len(set(names)) != len(names):
        raise InputError(None, f"sources need distinct names (got {', '.join(names)}); name them NAME=SOURCE",
                         code="bad-option")
    if ref is None and len(parsed) < 2:
        raise InputError(None, "give a --reference or at least two --source to compare", code="bad-option")
    pairs = [(s.name, ref.name) for s in parsed] if ref else [(a.name, b.name) for a, b in
                                                             itertools.combinations(parsed, 2)]
    everyone = [*parsed, *([ref] if ref else [])]
    for source in everyone:
        if isinstance(source, ModelSource):
            source.prepare(progress)
    discovery = discover_cases(data)
    by_name = {s.name: s for s in everyone}
    source_cases = {s.name: s.cases() for s in everyone}  # a SEG folder reads every header: once
    indexes = {name: _index(cases) for name, cases in source_cases.items()}

    rows: list[dict[str, Any]] = []
    value_rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    case_records: list[dict[str, Any]] = []
    matches: dict[str, tuple[Case, dict[str, SourceCase | None]]] = {}
    missing_segments: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    matched_keys: dict[str, set[str]] = defaultdict(set)
    for number, case in enumerate(discovery.cases):
        if progress:
            progress(f"comparing {case.id}", number, len(discovery.cases))
        keys = _case_keys(case, case_pattern)
        found = {name: next((index[k] for k in keys if k in index), None) for name, index in indexes.items()}
        for name, source_case in found.items():
            if source_case is not None:
                matched_keys[name].update(source_case.keys)
        record = {"case": case.id, "keys": list(keys), "sources": {n: (c.path.as_posix() if c else None)
                                                                    for n, c in found.items()}}
        case_records.append(record)
        matches[case.id] = (case, found)
        wanted = [pair for pair in pairs if found[pair[0]] and found[pair[1]]]
        if not wanted:
            continue
        try:
            grid = case.load()
        except MedhubError as e:
            failures.append({"case": case.id, "source": "", "reason": e.code, "message": e.message})
            continue
        labels: dict[str, tuple[np.ndarray, list[Segment]]] = {}
        for name in {n for pair in wanted for n in pair}:
            try:
                labels[name] = by_name[name].labels(found[name], grid)
            except MedhubError as e:
                failures.append({"case": case.id, "source": name, "reason": e.code, "message": e.message})
        record["spacing_mm"] = list(grid.spacing)
        for pred_name, ref_name in wanted:
            if pred_name not in labels or ref_name not in labels:
                continue
            rows += _segment_rows(case.id, pred_name, ref_name, labels[pred_name], labels[ref_name], grid.spacing,
                                  tolerance_mm, missing_segments[(pred_name, ref_name)])
            value_rows += _value_rows(case.id, pred_name, ref_name, found[pred_name], found[ref_name])
        del grid, labels

    unmatched = {
        "cases_without_source": {name: [r["case"] for r in case_records if r["sources"][name] is None]
                                 for name in indexes},
        "source_cases_without_input": {name: sorted(c.display for c in cases if not set(c.keys) & matched_keys[name])
                                       for name, cases in source_cases.items()},
        "segments": [{"source": p, "reference": r, "only_in_source": sorted(v["pred"]),
                      "only_in_reference": sorted(v["ref"])} for (p, r), v in missing_segments.items()
                     if v["pred"] or v["ref"]],
    }
    for source in everyone:
        if isinstance(source, ModelSource):
            failures += [{"source": source.name, **f} for f in source.failures()]
    result = Comparison(output=output, sources=parsed, reference=ref, pairs=pairs, rows=rows,
                        summary=summarize_rows(rows), value_rows=value_rows,
                        value_summary=summarize_values(value_rows), cases=case_records, unmatched=unmatched,
                        failures=failures, matches=matches)
    _write(result, data, tolerance_mm, case_pattern, discovery.warnings)
    if report:
        from medhub.compare.report import write_report

        result.report_path = write_report(result, data, case_pattern)
    return result


def _segment_rows(case_id: str, pred_name: str, ref_name: str, pred: tuple[np.ndarray, list[Segment]],
                  ref: tuple[np.ndarray, list[Segment]], spacing: Sequence[float], tolerance_mm: float,
                  missing: dict[str, set[str]]) -> list[dict[str, Any]]:
    pred_labels, pred_segments = pred
    ref_labels, ref_segments = ref
    pred_by_key = {s.concept.key: s for s in pred_segments}
    ref_by_key = {s.concept.key: s for s in ref_segments}
    missing["pred"].update(f"{k} ({s.concept.name})" for k, s in pred_by_key.items() if k not in ref_by_key)
    missing["ref"].update(f"{k} ({s.concept.name})" for k, s in ref_by_key.items() if k not in pred_by_key)
    rows = []
    for key, ref_segment in ref_by_key.items():
        pred_segment = pred_by_key.get(key)
        if pred_segment is None:
            continue
        metrics = segmentation_metrics(pred_labels == pred_segment.label, ref_labels == ref_segment.label,
                                       spacing, tolerance_mm)
        for metric, unit in SEGMENTATION_METRICS.items():
            rows.append({"case": case_id, "source": pred_name, "reference": ref_name, "segment": key,
                         "segment_name": ref_segment.concept.name, "metric": metric, "value": metrics[metric],
                         "unit": unit, "pred_empty": metrics["pred_empty"], "ref_empty": metrics["ref_empty"]})
    return rows


def _value_rows(case_id: str, pred_name: str, ref_name: str, pred: SourceCase | None,
                ref: SourceCase | None) -> list[dict[str, Any]]:
    if pred is None or ref is None:
        return []
    common = [name for name in pred.values if name in ref.values]
    return [{"case": case_id, "source": pred_name, "reference": ref_name, "value": name,
             "pred": pred.values[name], "ref": ref.values[name], "difference": pred.values[name] - ref.values[name]}
            for name in common if np.isfinite(pred.values[name]) and np.isfinite(ref.values[name])]


def summarize_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``summary.csv``'s rows: per source x reference x segment x metric, with the bootstrap CI of the mean."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    names: dict[tuple, tuple[str, str]] = {}
    for row in rows:
        key = (row["source"], row["reference"], row["segment"], row["metric"])
        groups[key].append(float(row["value"]))
        names[key] = (row["segment_name"], row["unit"])
    return [{"source": k[0], "reference": k[1], "segment": k[2], "segment_name": names[k][0], "metric": k[3],
             "unit": names[k][1], **summarize(values)} for k, values in groups.items()]


def summarize_values(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``values_summary.csv``'s rows: paired agreement per source x reference x value."""
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        groups[(row["source"], row["reference"], row["value"])].append((row["pred"], row["ref"]))
    out = []
    for (source, reference, value), pairs in groups.items():
        pred, ref = zip(*pairs, strict=True)
        out.append({"source": source, "reference": reference, "value": value, **paired_agreement(pred, ref)})
    return out


def _write(result: Comparison, data: Path, tolerance_mm: float, case_pattern: str | None,
           warnings: list[str]) -> None:
    out = result.output
    records.write_csv(out / "metrics.csv", result.rows, METRIC_COLUMNS)
    records.write_csv(out / "summary.csv", result.summary, SUMMARY_COLUMNS)
    records.write_csv(out / "values.csv", result.value_rows,
                      ("case", "source", "reference", "value", "pred", "ref", "difference"))
    records.write_csv(out / "values_summary.csv", result.value_summary,
                      ("source", "reference", "value", "n", "mean_difference", "sd_difference",
                       "mean_absolute_difference", "loa_lower", "loa_upper", "pearson_r", "spearman_rho", "icc_2_1"))
    result.record_path = records.write_json(out / "compare.json", {
        "kind": "medhub-compare",
        "medhub_version": __version__,
        "started_utc": records.utc_now(),
        "input": str(data.resolve()),
        "options": {"tolerance_mm": tolerance_mm, "case_pattern": case_pattern},
        "sources": [s.describe() for s in result.sources],
        "reference": result.reference.describe() if result.reference else None,
        "pairs": [list(p) for p in result.pairs],
        "cases": result.cases,
        "unmatched": result.unmatched,
        "failures": result.failures,
        "discovery_warnings": warnings,
        "packages": records.package_versions(),
        "host": records.host_info(),
    })
