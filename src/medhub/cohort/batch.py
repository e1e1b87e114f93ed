"""``run_batch``: run a model on a whole cohort, resumably, on a local pool or a Ray cluster.

Output layout of ``OUTPUT`` (see ``docs/cohort.md``)::

    OUTPUT/batch.sqlite         results store: one row per case (medhub.cohort.store)
    OUTPUT/run-<n>/<case-id>/   the case's files, exactly as `medhub run` writes them
    OUTPUT/run-<n>/results.csv  export of the store's rows when the batch ends
    OUTPUT/run-<n>/run.json     provenance and counts when the batch ends

The coordinator (this module, in the ``medhub batch`` process) is the only writer of the store. A case is
``pending`` until handed to a worker (``running``, its attempt counted), then ``ok`` or ``failed`` (final). After
``kill -9`` of the coordinator, the same command resumes: ``running`` cases go back to ``pending``, hidden staging
folders of the killed run are removed, and final cases are not run again (``retry_failed`` re-runs failures).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from medhub import __version__
from medhub.cohort.backends import TIMEOUT, Backend, make_backend
from medhub.cohort.manifest import CaseSource, identity_of, read_manifest, sources_from_root
from medhub.cohort.store import FAILED, FINAL_STATES, OK, PENDING, ResultsStore, RunInfo
from medhub.cohort.worker import CaseTask, failure_outcome
from medhub.errors import InputError, MedhubError
from medhub.hub.registry import get_model
from medhub.hub.runner import DEFAULT_OUTPUTS, OUTPUT_KINDS, check_model_runnable, provenance_record
from medhub.io import records
from medhub.io.files import ensure_writable_dir

LOCK_NAME = ".batch.lock"

#: How often the coordinator wakes up to check timeouts and refresh progress, in seconds.
TICK_S = 0.5


@dataclass
class BatchProgress:
    """A snapshot for progress displays. Counts are cases of the run; ``rate_per_hour`` and ``eta_s`` count only
    cases finished by this invocation (``None`` until one has)."""

    total: int
    ok: int
    failed: int
    running: int
    elapsed_s: float
    finished_now: int

    @property
    def done(self) -> int:
        return self.ok + self.failed

    @property
    def remaining(self) -> int:
        return self.total - self.done

    @property
    def rate_per_hour(self) -> float | None:
        return self.finished_now / self.elapsed_s * 3600 if self.finished_now and self.elapsed_s > 0 else None

    @property
    def eta_s(self) -> float | None:
        rate = self.rate_per_hour
        return self.remaining / rate * 3600 if rate else None


@dataclass
class BatchSummary:
    """What a batch did. ``output`` is the run's folder (``OUTPUT/run-<n>``)."""

    run_id: int
    model_id: str
    model_version: str
    store: Path
    output: Path
    backend: str
    workers: int
    total: int
    ok: int
    failed: int
    failures_by_reason: dict[str, int]
    ran_now: int
    already_final: int
    elapsed_s: float
    startup_s: float = 0.0  # of elapsed_s: starting the workers (and Ray), in seconds
    warnings: list[str] = field(default_factory=list)

    @property
    def throughput_per_hour(self) -> float | None:
        return self.ran_now / self.elapsed_s * 3600 if self.ran_now and self.elapsed_s > 0 else None


def _acquire_lock(output: Path) -> IO[str]:
    """Hold an exclusive lock on ``OUTPUT`` for the life of this process: two coordinators on one store would
    run cases twice. POSIX record locks (``lockf``) are released by the kernel when the holder dies, even by
    ``kill -9``, and are not inherited by forked workers."""
    handle = open(output / LOCK_NAME, "a+")  # noqa: SIM115 - held open until the batch ends
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise MedhubError(output, f"another `medhub batch` ({holder}) is running on this output folder",
                          code="busy") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def _select_run(store: ResultsStore, model: Any, digest: str | None, source: str, provenance: dict[str, Any],
                new_run: bool) -> RunInfo:
    """The run to continue, or a new one; refuse to mix a different model version or weights into a run.

    ``new_run`` starts a new run only when the current one is of another model, version or weights: so the same
    command, ``--new-run`` included, resumes the new run after a crash instead of starting yet another.
    """
    card = model.card
    current = store.current_run()
    if current is not None:
        ours = (card.id, card.version, digest)
        theirs = (current.model_id, current.model_version, current.weights_sha256)
        if ours == theirs:
            return current
        if not new_run:
            raise MedhubError(store.path.parent, f"this output holds run {current.run_id} of {theirs[0]} "
                              f"{theirs[1]} (weights {str(theirs[2])[:12]}); {ours[0]} {ours[1]} (weights "
                              f"{str(ours[2])[:12]}) would mix results of two models. Add --new-run to start a "
                              "new run beside it, or choose another --output", code="model-changed")
    return store.start_run(model_id=card.id, model_version=card.version, weights_sha256=digest,
                           medhub_version=__version__, source=source,
                           card=card.model_dump(mode="json", exclude_none=True), provenance=provenance)


def remove_stale_staging(run_output: Path, case_id: str | None = None) -> int:
    """Delete hidden staging folders (``.<case>.*.partial``) and half-replaced old folders (``.<case>.old-*``)
    that a killed worker or coordinator left in ``run_output``; only the lock holder may call this. Returns how
    many were removed."""
    pattern = "." + (case_id or "*") + "."
    removed = 0
    for folder in [*run_output.glob(pattern + "*.partial"), *run_output.glob(pattern + "old-*")]:
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


def _gather_sources(input_root: Path | None, manifest: Path | None, sequences: list | None = None
                    ) -> tuple[list[CaseSource], list[str], str]:
    if manifest is not None:
        return read_manifest(manifest, input_root), [], f"manifest:{manifest}"
    assert input_root is not None  # run_batch checked that one of the two is given
    sources, warnings = sources_from_root(input_root, sequences)
    return sources, warnings, f"input:{input_root}"


def run_batch(
    model: str,
    output: str | Path,
    *,
    input_root: str | Path | None = None,
    manifest: str | Path | None = None,
    workers: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    timeout_s: float | None = None,
    retry_failed: bool = False,
    new_run: bool = False,
    outputs: Iterable[str] = DEFAULT_OUTPUTS,
    on_progress: Callable[[BatchProgress], None] | None = None,
) -> BatchSummary:
    """Run ``model`` on every case under ``input_root`` (or listed in ``manifest``) into ``output``, resumably.

    ``workers`` defaults to the cores of this machine (local) or the CPUs of the Ray cluster; ``timeout_s`` is
    the wall-clock limit per case in seconds (a case past it is killed and recorded with reason ``timeout``).
    Raises :class:`MedhubError` only for what stops the whole batch (unknown model, refused model change,
    unreadable manifest, another batch on the same output); a failing case is a row with a reason code.
    """
    wanted = tuple(outputs)
    unknown = set(wanted) - set(OUTPUT_KINDS)
    if unknown:
        raise InputError(None, f"unknown output kind(s) {sorted(unknown)}; choose from {', '.join(OUTPUT_KINDS)}",
                         code="bad-option")
    if timeout_s is not None and timeout_s <= 0:
        raise InputError(None, f"--timeout must be positive (got {timeout_s:g} s)", code="bad-option")
    if input_root is None and manifest is None:
        raise InputError(None, "give --input ROOT or --manifest CSV", code="bad-option")
    model_obj = get_model(model)
    digest = check_model_runnable(model_obj)
    backend_obj = make_backend(backend, model_obj.card.id, workers, ray_address)  # checks the options, starts nothing
    # Absolute paths: workers (Ray actors above all) need not share the coordinator's working directory.
    output = ensure_writable_dir(Path(output).resolve())
    input_root = Path(input_root).resolve() if input_root is not None else None
    manifest = Path(manifest).resolve() if manifest is not None else None
    lock = _acquire_lock(output)
    store = ResultsStore.create_or_open(output)
    try:
        sources, warnings, source_text = _gather_sources(input_root, manifest, model_obj.card.inputs.sequences)
        provenance = provenance_record(model_obj, digest)
        run = _select_run(store, model_obj, digest, source_text, provenance, new_run)
        run_output = output / run.output_dir
        run_output.mkdir(exist_ok=True)
        store.add_cases(run, ({"case_id": s.case_id, **identity_of(s)} for s in sources))
        store.reset_interrupted(run)
        remove_stale_staging(run_output)
        if retry_failed:
            store.reset_failed(run)
        summary = _coordinate(store, run, run_output, sources, backend_obj, provenance, wanted, timeout_s,
                              on_progress)
        summary.warnings = warnings
        _write_run_files(store, run, run_output, provenance, summary)
        return summary
    finally:
        store.close()
        lock.close()


def _coordinate(store: ResultsStore, run: RunInfo, run_output: Path, sources: list[CaseSource], backend: Backend,
                provenance: dict[str, Any], outputs: tuple[str, ...], timeout_s: float | None,
                on_progress: Callable[[BatchProgress], None] | None) -> BatchSummary:
    """Hand pending cases to the backend's workers, enforce timeouts, record every outcome; the one loop that
    both backends share."""
    start = time.monotonic()
    statuses = store.statuses(run)
    todo = [s for s in sources if statuses.get(s.case_id) == PENDING]
    already_final = sum(1 for s in statuses.values() if s in FINAL_STATES)
    counts = store.counts(run)
    progress = BatchProgress(total=len(statuses), ok=counts[OK], failed=counts[FAILED], running=0, elapsed_s=0.0,
                             finished_now=0)

    def record(outcome: dict[str, Any], case_id: str) -> None:
        if outcome["status"] != OK:
            # A failed case has no folder: not even one published by an interrupted earlier attempt.
            shutil.rmtree(run_output / case_id, ignore_errors=True)
            remove_stale_staging(run_output, case_id)
        store.record_outcome(run, outcome)
        progress.ok += outcome["status"] == OK
        progress.failed += outcome["status"] != OK
        progress.finished_now += 1

    def report() -> None:
        progress.elapsed_s = time.monotonic() - start
        if on_progress is not None:
            on_progress(progress)

    threads = 1  # one core per case: `workers` cases in parallel already fill the cores
    queue = list(reversed(todo))  # pop() from the end keeps the discovery order
    running: dict[str, tuple[CaseTask, float, float]] = {}  # case id -> (task, monotonic hand-out, deadline)
    started_backend, startup_s = False, 0.0
    try:
        report()
        while queue or running:
            while queue and queue[-1].error is not None:  # manifest rows that cannot run at all
                task = _task(queue.pop(), run, run_output, provenance, outputs, threads)
                store.mark_running(run, task.case_id, "coordinator")
                record(failure_outcome(task, *task.source.error, wall_s=0.0, worker="coordinator"), task.case_id)
            if not queue and not running:
                break
            if not started_backend:
                t = time.monotonic()
                backend.start()
                startup_s = time.monotonic() - t
                started_backend = True
            while queue and queue[-1].error is None and backend.free_slots():
                task = _task(queue.pop(), run, run_output, provenance, outputs, threads)
                worker = backend.submit(task)
                store.mark_running(run, task.case_id, worker)
                handed_out = time.monotonic()
                running[task.case_id] = (task, handed_out, handed_out + timeout_s if timeout_s else float("inf"))
            progress.running = len(running)
            report()
            for finished in backend.wait(TICK_S):
                _, handed_out, _ = running.pop(finished.task.case_id)
                outcome = finished.outcome
                if outcome.get("wall_s") is not None:
                    # What the backend added to the case: hand-out to the worker and the result's way back.
                    outcome["overhead_s"] = round(time.monotonic() - handed_out - outcome["wall_s"], 3)
                record(outcome, finished.task.case_id)
            now = time.monotonic()
            for case_id, (task, _, deadline) in list(running.items()):
                if now >= deadline:
                    backend.kill(case_id)
                    del running[case_id]
                    record(failure_outcome(task, TIMEOUT, f"{case_id}: still running after the {timeout_s:g} s "
                                           "timeout; killed", wall_s=timeout_s), case_id)
            progress.running = len(running)
        report()
    finally:
        if started_backend:
            backend.close()
    counts = store.counts(run)
    return BatchSummary(
        run_id=run.run_id, model_id=run.model_id, model_version=run.model_version, store=store.path,
        output=run_output, backend=backend.name, workers=backend.slots, total=sum(counts.values()), ok=counts[OK],
        failed=counts[FAILED], failures_by_reason=store.failures_by_reason(run), ran_now=progress.finished_now,
        already_final=already_final, elapsed_s=round(time.monotonic() - start, 3), startup_s=round(startup_s, 3))


def _task(source: CaseSource, run: RunInfo, run_output: Path, provenance: dict[str, Any],
          outputs: tuple[str, ...], threads: int) -> CaseTask:
    return CaseTask(case_id=source.case_id, model_id=run.model_id, run_output=str(run_output), source=source,
                    provenance=provenance, outputs=outputs, threads=threads)


def _write_run_files(store: ResultsStore, run: RunInfo, run_output: Path, provenance: dict[str, Any],
                     summary: BatchSummary) -> None:
    """``results.csv`` (the store's rows, flat) and ``run.json`` (provenance and counts) in the run folder."""
    rows = []
    for row in store.rows(run):
        flat = {k: v for k, v in row.items() if k not in ("outputs", "values", "warnings", "input")}
        flat.update({f"value_{k}": v for k, v in (row["values"] or {}).items()})
        rows.append(flat)
    records.write_csv(run_output / "results.csv", rows)
    records.write_json(run_output / "run.json", {
        **provenance, "run_id": run.run_id, "source": run.source, "created_utc": run.created_utc,
        "finished_utc": records.utc_now(), "store": str(store.path),
        "counts": {"total": summary.total, "ok": summary.ok, "failed": summary.failed},
        "failures_by_reason": summary.failures_by_reason,
        "discovery_warnings": summary.warnings,
        "this_invocation": {"backend": summary.backend, "workers": summary.workers, "ran": summary.ran_now,
                            "already_final": summary.already_final, "elapsed_s": summary.elapsed_s,
                            "startup_s": summary.startup_s},
    })
