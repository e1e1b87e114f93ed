"""What runs inside a worker process: one case, through exactly the code path of ``medhub run``.

:func:`execute_task` resolves the case, calls :func:`medhub.hub.runner.run_case` (which stages the case's files
in a hidden folder and renames it into place only when complete) and returns a plain, picklable dict: the
*outcome*. It never raises: an unexpected exception becomes a failed outcome with reason ``internal-error``. A
worker that dies (a segfault, ``os._exit``, the OOM killer) cannot report anything; the backend notices the dead
process and builds the failed outcome with :func:`failure_outcome`.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medhub.cohort.manifest import CaseSource, case_identity, resolve_case
from medhub.errors import MedhubError
from medhub.hub.registry import get_model
from medhub.hub.runner import case_record, run_case
from medhub.io.records import utc_now


@dataclass(frozen=True)
class CaseTask:
    """One case to run: what the coordinator sends to a worker.

    ``run_output`` is the run's output folder (the case lands in ``run_output/<case_id>/``); ``threads`` caps
    the threads one case may use (pixel decoding, torch), so that ``workers`` processes share the cores instead
    of oversubscribing them.
    """

    case_id: str
    model_id: str
    run_output: str
    source: CaseSource
    provenance: dict[str, Any]
    outputs: tuple[str, ...]
    threads: int = 1


def worker_name() -> str:
    """``host:pid`` of this process, as the store records it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def reset_peak_rss() -> None:
    """Reset this process's peak-RSS high-water mark, so the peak that ``run_case`` reports is this case's.

    Linux only (``/proc/self/clear_refs``, value 5, since kernel 4.0); elsewhere the peak stays the worker's peak
    since it started, which over-reports and is documented as such.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def limit_threads(threads: int) -> None:
    """Cap torch's intra-op threads when torch is loaded (the env variables only act before its import)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def failure_outcome(task: CaseTask, code: str, message: str, *, wall_s: float | None = None,
                    worker: str | None = None) -> dict[str, Any]:
    """The outcome of a case that could not report for itself (crash, timeout, unresolvable manifest row)."""
    source = task.source
    return {
        "case_id": task.case_id, "status": "failed", "reason_code": code, "message": message,
        "identity": {"patient_id": source.patient_id, "study_instance_uid": source.study_instance_uid,
                     "series_instance_uid": source.series_instance_uid},
        "input": {"path": source.source_path}, "outputs": {}, "values": {}, "warnings": [], "timings_s": {},
        "peak_rss_mib": None, "wall_s": wall_s, "output_dir": None, "worker": worker,
        "finished_utc": utc_now(),
    }


def execute_task(task: CaseTask) -> dict[str, Any]:
    """Run one case in this process and return its outcome (see the module docstring); never raises."""
    started, cpu_started = time.perf_counter(), time.process_time()
    reset_peak_rss()
    limit_threads(task.threads)
    try:
        model = get_model(task.model_id)  # cached per process: a worker loads the model once
        case = resolve_case(task.source, model.card.inputs.sequences)
    except MedhubError as e:
        return failure_outcome(task, e.code, e.message, wall_s=time.perf_counter() - started, worker=worker_name())
    try:
        result = run_case(model, case, Path(task.run_output), outputs=task.outputs, provenance=task.provenance,
                          workers=task.threads)
    except Exception as e:  # a model bug must cost one case, not the run
        where = traceback.extract_tb(e.__traceback__)[-1]
        message = f"{case.label}: {type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"
        outcome = failure_outcome(task, "internal-error", " ".join(message.split()),
                                  wall_s=time.perf_counter() - started, worker=worker_name())
        outcome["identity"] = case_identity(case)
        return outcome
    record = case_record(result)
    record.update(
        identity=case_identity(case),
        output_dir=str(Path(task.run_output) / case.id) if result.ok else None,
        wall_s=round(time.perf_counter() - started, 3),
        # CPU seconds of this process (all its threads): what the case cost, whatever else loads the machine.
        cpu_s=round(time.process_time() - cpu_started, 3),
        worker=worker_name(),
        finished_utc=utc_now(),
    )
    return record


def warm_up(model_id: str) -> None:
    """Load the model and the output writers that ``run_case`` imports lazily, so that a worker's first case is
    not charged a second or more of imports against its ``--timeout``."""
    import medhub.io.seg
    import medhub.io.sr  # noqa: F401 - imported for the side effect of being loaded

    get_model(model_id)  # fail at start-up, not on the first case, when the model cannot load here


class CaseRunner:
    """A long-lived worker: loads the model once, then runs cases one at a time (the Ray actor's class)."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        warm_up(model_id)

    def ready(self) -> str:
        return worker_name()

    def run(self, task: CaseTask) -> dict[str, Any]:
        return execute_task(task)
