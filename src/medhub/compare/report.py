"""The standalone HTML report of a comparison: one file, pictures inlined, readable offline.

It holds: the sources and options; the summary table (mean with its 95 % bootstrap CI, median); a box plot per
metric; scalar agreement (Bland–Altman) where both sides report values; the per-case table; and, per compared pair,
the 5 best and 5 worst cases by mean Dice with an axial thumbnail through the slice where they disagree most
(the reference drawn as a white outline, the prediction filled in its segment colours).
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medhub.io.files import write_text_atomic
from medhub.metrics.segmentation import SEGMENTATION_METRICS

if TYPE_CHECKING:
    from medhub.compare.comparison import Comparison

#: Cases shown at each end of the ranking.
N_SHOWN = 5
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}.cases{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;font-size:12px;width:260px}img.thumb{width:256px;background:#000}h2{margin-top:1.6em}
.muted{color:#777}
"""


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(f"<th class='{'l' if i < left else ''}'>{html.escape(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{_fmt(v)}</td>" for i, v in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _box_plots(comparison: Comparison) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    by_metric: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in comparison.rows:
        label = f"{row['source']} vs {row['reference']}\n{row['segment_name']}"
        by_metric[row["metric"]][label].append(float(row["value"]))
    parts = []
    for metric, unit in SEGMENTATION_METRICS.items():
        groups = by_metric.get(metric)
        if not groups:
            continue
        figure = Figure(figsize=(max(4.0, 1.6 * len(groups)), 3.4))
        axes = figure.subplots()
        axes.boxplot(list(groups.values()), tick_labels=list(groups), showmeans=True)
        axes.set_title(metric + ("" if unit == "1" else f" ({unit})"), fontsize=10)
        axes.tick_params(axis="x", labelsize=7)
        figure.tight_layout()
        parts.append(f"<img alt='box plot of {metric}' src='data:image/png;base64,{_png(figure)}'>")
    return "".join(parts)


def _bland_altman(comparison: Comparison) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    groups: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for row in comparison.value_rows:
        groups[(row["source"], row["reference"], row["value"])].append((row["pred"], row["ref"]))
    parts = []
    for (source, reference, value), pairs in groups.items():
        if len(pairs) < 2:
            continue
        pred, ref = (np.asarray(v) for v in zip(*pairs, strict=True))
        difference, mean = pred - ref, (pred + ref) / 2
        figure = Figure(figsize=(4.2, 3.2))
        axes = figure.subplots()
        axes.scatter(mean, difference, s=14)
        centre, sd = difference.mean(), difference.std(ddof=1)
        for level, style in ((centre, "-"), (centre - 1.96 * sd, "--"), (centre + 1.96 * sd, "--")):
            axes.axhline(level, color="tab:red", linestyle=style, linewidth=1)
        axes.set_title(f"{value}: {source} − {reference}", fontsize=9)
        axes.set_xlabel("mean of the two", fontsize=8)
        axes.set_ylabel("difference", fontsize=8)
        figure.tight_layout()
        parts.append(f"<img alt='Bland-Altman of {value}' src='data:image/png;base64,{_png(figure)}'>")
    return "".join(parts)


def case_scores(comparison: Comparison) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """Per compared pair, ``(case, mean Dice over segments)`` from best to worst."""
    dice: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in comparison.rows:
        if row["metric"] == "dice":
            dice[(row["source"], row["reference"])][row["case"]].append(float(row["value"]))
    return {pair: sorted(((case, float(np.mean(v))) for case, v in cases.items()), key=lambda cv: (-cv[1], cv[0]))
            for pair, cases in dice.items()}


def thumbnail(comparison: Comparison, case_id: str, pred_name: str, ref_name: str, size: int = 256) -> str | None:
    """A base64 PNG: the axial slice where the pair's masks disagree most (the reference's largest slice when
    they agree), in radiological orientation; ``None`` when the case cannot be loaded again."""
    from medhub.io.orientation import apply_canonical, canonical_transform
    from medhub.io.preview import auto_window, fallback_color, render_slice

    case, found = comparison.matches.get(case_id, (None, {}))
    if case is None or found.get(pred_name) is None or found.get(ref_name) is None:
        return None
    sources = {s.name: s for s in [*comparison.sources, *([comparison.reference] if comparison.reference else [])]}
    try:
        grid = case.load()
        pred_labels, pred_segments = sources[pred_name].labels(found[pred_name], grid)
        ref_labels, ref_segments = sources[ref_name].labels(found[ref_name], grid)
    except Exception:  # a thumbnail is a convenience: the numbers are already written
        return None
    transform = canonical_transform(grid.direction)
    image = apply_canonical(grid.array, transform)
    pred_labels, ref_labels = apply_canonical(pred_labels, transform), apply_canonical(ref_labels, transform)
    spacing = [grid.spacing[axis] for axis in transform[0]]
    ref_by_key = {s.concept.key: s for s in ref_segments}
    common = [(p, ref_by_key[p.concept.key]) for p in pred_segments if p.concept.key in ref_by_key]
    disagreement = np.zeros(image.shape[0])
    reference_area = np.zeros(image.shape[0])
    for p, r in common:
        pm, rm = pred_labels == p.label, ref_labels == r.label
        disagreement += (pm ^ rm).sum(axis=(1, 2))
        reference_area += rm.sum(axis=(1, 2))
    score = disagreement if disagreement.any() else reference_area
    k = int(np.argmax(score)) if score.any() else image.shape[0] // 2
    fills = [(pred_labels[k] == p.label, p.color or fallback_color(i)) for i, (p, _) in
             enumerate(common)]
    outlines = [(ref_labels[k] == r.label, (255, 255, 255)) for _, r in common]
    level, width = (-300.0, 1400.0) if (grid.modality or "CT") == "CT" else auto_window(image[k])
    picture = render_slice(image[k], spacing[1], spacing[2], level, width, fills=fills, outlines=outlines, size=size)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_report(comparison: Comparison, data: Path, case_pattern: str | None) -> Path:
    """Write ``report.html`` into the comparison's folder, atomically; return its path."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>medhub compare</title><style>{_STYLE}"
             "</style></head><body><h1>medhub compare</h1>"]
    sources = ", ".join(html.escape(s.name) for s in comparison.sources)
    reference = html.escape(comparison.reference.name) if comparison.reference else "none (pairwise)"
    parts.append(f"<p>Input <code>{html.escape(str(data))}</code>; sources: {sources}; reference: {reference}. "
                 f"Cases compared: {len({r['case'] for r in comparison.rows})}. Files: <a href='metrics.csv'>"
                 "metrics.csv</a>, <a href='summary.csv'>summary.csv</a>, <a href='values.csv'>values.csv</a>, "
                 "<a href='compare.json'>compare.json</a>.</p>")
    parts.append("<h2>Summary</h2><p class='muted'>Mean over cases with its 95 % bootstrap CI, and the median. "
                 "Empty masks: Dice/NSD 1 when both are empty, 0 when one is; distances then 0 or the grid "
                 "diagonal.</p>")
    summary_rows = [[s["source"], s["reference"], s["segment_name"], s["metric"], s["n"], s["mean"],
                     f"{_fmt(s['ci_low'])} – {_fmt(s['ci_high'])}", s["median"]] for s in comparison.summary]
    parts.append(_table(["source", "reference", "segment", "metric", "n", "mean", "95 % CI", "median"], summary_rows,
                        left=4))
    parts.append(_box_plots(comparison))
    if comparison.value_summary:
        parts.append("<h2>Values</h2>")
        parts.append(_table(["source", "reference", "value", "n", "mean difference", "LoA low", "LoA high",
                             "Pearson r", "ICC(2,1)"],
                            [[v["source"], v["reference"], v["value"], v["n"], v["mean_difference"], v["loa_lower"],
                              v["loa_upper"], v["pearson_r"], v["icc_2_1"]] for v in comparison.value_summary],
                            left=3))
        parts.append(_bland_altman(comparison))
    for (pred_name, ref_name), ranked in case_scores(comparison).items():
        parts.append(f"<h2>{html.escape(pred_name)} vs {html.escape(ref_name)}: best and worst cases</h2>"
                     "<p class='muted'>Mean Dice over the segments both have; the slice where they disagree most. "
                     "White outline: reference; colour: prediction.</p>")
        pictures: dict[str, str | None] = {}
        for title, chosen in (("best", ranked[:N_SHOWN]), ("worst", ranked[::-1][:N_SHOWN])):
            figures = []
            for case_id, score in chosen:
                if case_id not in pictures:
                    pictures[case_id] = thumbnail(comparison, case_id, pred_name, ref_name)
                picture = pictures[case_id]
                image = (f"<img class='thumb' alt='{html.escape(case_id)}' src='data:image/png;base64,{picture}'>"
                         if picture else "<div class='muted'>no picture</div>")
                figures.append(f"<figure>{image}<figcaption>{html.escape(case_id)}: Dice {score:.3f}"
                               "</figcaption></figure>")
            parts.append(f"<h3>{title}</h3><div class='cases'>{''.join(figures)}</div>")
    parts.append("<h2>Per case</h2>")
    per_case: dict[str, dict[str, float]] = defaultdict(dict)
    columns: list[str] = []
    for row in comparison.rows:
        if row["metric"] in ("dice", "hd95_mm"):
            column = f"{row['source']} vs {row['reference']}: {row['segment_name']} {row['metric']}"
            if column not in columns:
                columns.append(column)
            per_case[row["case"]][column] = row["value"]
    parts.append(_table(["case", *columns], [[case, *(values.get(c) for c in columns)]
                                             for case, values in sorted(per_case.items())]))
    unmatched = comparison.unmatched
    lines = [f"{name}: no prediction for {', '.join(cases)}" for name, cases in
             unmatched.get("cases_without_source", {}).items() if cases]
    lines += [f"{name}: not in the input: {', '.join(files)}" for name, files in
              unmatched.get("source_cases_without_input", {}).items() if files]
    for s in unmatched.get("segments", []):
        only_source, only_reference = ", ".join(s["only_in_source"]) or "none", ", ".join(s["only_in_reference"])
        lines.append(f"{s['source']} vs {s['reference']}: segments only in the source: {only_source}; only in the "
                     f"reference: {only_reference or 'none'}")
    lines += [f"{f.get('source') or 'input'} on {f.get('case')}: {f.get('message')}" for f in comparison.failures]
    parts.append("<h2>Unmatched and failed</h2>" + ("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines)
                                                    + "</ul>" if lines else "<p>Every case and segment matched.</p>"))
    parts.append("</body></html>")
    return write_text_atomic(comparison.output / "report.html", "\n".join(parts))
