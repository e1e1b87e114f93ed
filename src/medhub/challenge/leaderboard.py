"""Leaderboards: a metric table ranked (:mod:`medhub.challenge.ranking`), written as CSV, Markdown and HTML.

A metric table CSV has a column naming the submission (``submission``, ``team``, ``name``, ``method``, ``model`` or
``participant``, in any case; else its first column that is not a metric) and one column per task metric, named
``<task id>_<metric>`` (``t1_auroc, t2_dice, t2_nsd, t3_mae, t3_corr`` for FOMO25). A cell's value is its first
number (``0.85 ± 0.02`` reads 0.85; a unit such as ``%`` does not change ranks); an empty cell, ``nan`` or ``-`` is
a missing value (the submission did not take part in that task).
"""

from __future__ import annotations

import csv
import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medhub.challenge.ranking import Ranking, rank_table
from medhub.challenge.tasks import TaskSet
from medhub.errors import InputError
from medhub.io import records
from medhub.io.files import write_text_atomic

NAME_COLUMNS = ("submission", "team", "name", "method", "model", "participant")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def read_metric_table(path: str | Path, task_set: TaskSet) -> tuple[list[str], dict[str, list[float]]]:
    """Submissions and ``{column: values}`` from a metric table CSV; every column of ``task_set`` must be there."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"cannot read the metric table ({e})", code="unreadable") from e
    if not rows:
        raise InputError(path, "the metric table has no rows", code="no-input")
    header = [h.strip() for h in rows[0]]
    wanted = [c.name for c in task_set.columns()]
    name_column = next((h for h in rows[0] if h.strip().lower() in NAME_COLUMNS), None) or \
        next((h for h in rows[0] if h.strip() not in wanted), None)
    if name_column is None:
        raise InputError(path, f"no column naming the submissions (e.g. {', '.join(NAME_COLUMNS)}) in {header}",
                         code="bad-input")
    missing = [c for c in wanted if c not in header]
    if missing:
        raise InputError(path, f"columns {', '.join(missing)} missing (a {task_set.name} table has "
                         f"{', '.join(wanted)})", code="bad-input")
    keys = {h.strip(): h for h in rows[0]}
    table: dict[str, list[float]] = {c: [] for c in wanted}
    for line, row in enumerate(rows, start=2):
        for c in wanted:
            text = (row[keys[c]] or "").strip()
            number = _NUMBER.search(text)
            if text.lower() in ("", "nan", "-", "–", "na", "n/a"):
                table[c].append(math.nan)
            elif number is None:
                raise InputError(path, f"line {line}, column {c}: {text!r} is not a number", code="bad-input")
            else:
                table[c].append(float(number.group()))
    return [row[name_column].strip() for row in rows], table


def leaderboard_rows(ranking: Ranking, table: Mapping[str, Sequence[float]], task_set: TaskSet,
                     tiers: Sequence[int] | None = None,
                     intervals: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> list[dict[str, Any]]:
    """One row per submission, best first: position, name, overall score, tier, task ranks, metric values (and
    their CIs when ``intervals`` gives them)."""
    rows = []
    for position, i in enumerate(ranking.order(), start=1):
        row: dict[str, Any] = {"position": position, "submission": ranking.submissions[i],
                               "overall": round(float(ranking.overall[i]), 4)}
        if tiers is not None:
            row["tier"] = tiers[i]
        for task in task_set.tasks:
            row[f"{task.id}_rank"] = round(float(ranking.task_ranks[task.id][i]), 4)
        for column in task_set.columns():
            value = table[column.name][i]
            row[column.name] = None if not np.isfinite(value) else round(float(value), 4)
            if intervals is not None and column.name in intervals:
                low, high = intervals[column.name][i]
                row[f"{column.name}_ci_low"] = None if not np.isfinite(low) else round(float(low), 4)
                row[f"{column.name}_ci_high"] = None if not np.isfinite(high) else round(float(high), 4)
        rows.append(row)
    return rows


def rank_metric_table(path: str | Path, task_set: TaskSet, *,
                      task_weights: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """``medhub leaderboard``: read a metric table and rank it."""
    submissions, table = read_metric_table(path, task_set)
    ranking = rank_table(submissions, table, task_set.columns(), task_weights=task_weights or task_set.weights())
    return leaderboard_rows(ranking, table, task_set)


def _cell(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        return "–"
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return f"{text} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else text


def write_leaderboard(rows: Sequence[Mapping[str, Any]], task_set: TaskSet, folder: str | Path,
                      title: str = "Leaderboard") -> dict[str, Path]:
    """``leaderboard.csv``, ``leaderboard.md`` and ``leaderboard.html`` in ``folder`` (written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else ["position", "submission", "overall"]
    records.write_csv(folder / "leaderboard.csv", [dict(r) for r in rows], tuple(columns))
    shown = ["position", "submission", "overall"] + (["tier"] if rows and "tier" in rows[0] else []) + \
        [f"{t.id}_rank" for t in task_set.tasks] + [c.name for c in task_set.columns()]
    header = {"overall": "overall (mean task rank)"}
    lines = [f"# {title}", "", f"Task set {task_set.name}; lower overall is better.", "",
             "| " + " | ".join(header.get(c, c) for c in shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_cell(r, c) for c in shown) + " |" for r in rows]
    write_text_atomic(folder / "leaderboard.md", "\n".join(lines) + "\n")
    cells = "".join(f"<th>{html.escape(header.get(c, c))}</th>" for c in shown)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r, c))}</td>" for c in shown) + "</tr>" for r in rows)
    write_text_atomic(folder / "leaderboard.html", f"<!doctype html><html><head><meta charset='utf-8'><title>"
                f"{html.escape(title)}</title><style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}"
                f"td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>"
                f"<h1>{html.escape(title)}</h1><p>Task set {html.escape(task_set.name)}; lower overall is better."
                f"</p><table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table></body></html>\n")
    return {"csv": folder / "leaderboard.csv", "md": folder / "leaderboard.md", "html": folder / "leaderboard.html"}
