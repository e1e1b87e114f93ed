"""Where cases run: a local process pool or a Ray cluster, behind one small interface.

Both backends have the same shape: ``slots`` long-lived worker processes, each running **one case at a time**,
each replaced when it dies or is killed. The coordinator (:mod:`medhub.cohort.batch`) hands out tasks, enforces
timeouts with :meth:`Backend.kill` and records outcomes; it does not know which backend it talks to.

Why long-lived workers rather than a process per case: the model (and torch) load once per worker, not once per
scan. Why not :class:`concurrent.futures.ProcessPoolExecutor`: a worker that dies breaks the whole executor and
fails every pending future, so the dead case cannot be told from its innocent neighbours, and a running task
cannot be stopped at a timeout. Here each slot is its own process with its own pipe: a death is that case's
failure and nobody else's, and a timeout kills exactly one process.

The Ray backend uses one actor per slot (``max_restarts=0``, ``max_task_retries=0``: a crashing case is never
retried silently). An actor keeps the model loaded like a local worker does, and a timeout is measured from the
moment a ready actor receives the case, not from when Ray finds a worker for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from medhub.cohort.worker import CaseRunner, CaseTask, execute_task, failure_outcome, warm_up
from medhub.errors import MedhubError

#: Reason codes the backends give to cases that could not report for themselves.
CRASHED, TIMEOUT, OUT_OF_MEMORY = "worker-crashed", "timeout", "out-of-memory"


@dataclass
class Finished:
    """A case that left its worker: ``outcome`` as returned by :func:`execute_task` or built by the backend."""

    task: CaseTask
    outcome: dict[str, Any]


class Backend(Protocol):
    """What the coordinator needs from a place to run cases."""

    name: str
    slots: int

    def start(self) -> None:
        """Start ``slots`` workers (raises :class:`MedhubError` when they cannot start)."""

    def free_slots(self) -> int: ...

    def submit(self, task: CaseTask) -> str:
        """Give ``task`` to an idle worker; return the worker's name (``host:pid``)."""

    def wait(self, timeout_s: float) -> list[Finished]:
        """Block up to ``timeout_s`` seconds for cases to finish; return those that did (maybe none)."""

    def kill(self, case_id: str) -> None:
        """Kill the worker running ``case_id`` and replace it (the case's outcome is the caller's to record)."""

    def close(self) -> None:
        """Stop every worker."""


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown exit"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


# -- local process pool ------------------------------------------------------------------------------------

def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the coordinator dies, so that after ``kill -9`` of the coordinator
    no orphan finishes a case (and publishes its folder) behind the back of the resumed run."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the coordinator died before prctl took effect
        os._exit(1)


def _local_worker_main(connection: Connection, parent_pid: int, model_id: str) -> None:
    """Body of a local worker process: run the tasks that arrive on ``connection`` until it closes."""
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the coordinator decides what happens to running cases.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        runner = CaseRunner(model_id)
    except MedhubError as e:
        connection.send({"startup-error": e.message})
        return
    connection.send({"ready": runner.ready()})
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        connection.send(execute_task(task))


class _WorkerPool:
    """What both pools share: a list of workers, each with the ``task`` it runs (``None`` when idle)."""

    _workers: list[Any]

    def _replace(self, worker: Any) -> None:
        raise NotImplementedError

    def free_slots(self) -> int:
        return sum(w.task is None for w in self._workers)

    def _idle_worker(self) -> Any:
        return next(w for w in self._workers if w.task is None)

    def kill(self, case_id: str) -> None:
        worker = next(w for w in self._workers if w.task is not None and w.task.case_id == case_id)
        self._replace(worker)


@dataclass(eq=False)  # identity: workers are dict keys and list.index() targets
class _LocalWorker:
    process: Any  # multiprocessing.Process (the context's class)
    connection: Connection
    name: str
    task: CaseTask | None = None
    started: float = field(default=0.0)


class LocalPool(_WorkerPool):
    """``slots`` worker processes on this machine.

    On Linux the workers are forked from the coordinator, which has already imported the model: a new worker
    (at start, or replacing a dead one) is ready in milliseconds. Where ``fork`` is unavailable they are spawned
    and load the model themselves.
    """

    name = "local"

    def __init__(self, model_id: str, slots: int) -> None:
        self.model_id = model_id
        self.slots = slots
        # fork is only safe enough on Linux (macOS system libraries break in forked children).
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        self._context = multiprocessing.get_context(method)
        self._workers: list[_LocalWorker] = []

    def _spawn(self) -> _LocalWorker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_local_worker_main, args=(child_end, os.getpid(), self.model_id),
                                        daemon=True, name="medhub-batch-worker")
        process.start()
        child_end.close()
        if not parent_end.poll(300):
            process.kill()
            raise MedhubError(None, f"a local worker for {self.model_id} did not start within 300 s",
                              code="worker-start")
        try:
            hello = parent_end.recv()
        except EOFError:
            process.join()
            raise MedhubError(None, f"a local worker for {self.model_id} died at start-up "
                              f"({_signal_name(process.exitcode)})", code="worker-start") from None
        if "startup-error" in hello:
            process.join()
            raise MedhubError(None, f"a local worker cannot load the model: {hello['startup-error']}",
                              code="worker-start")
        return _LocalWorker(process=process, connection=parent_end, name=hello["ready"])

    def start(self) -> None:
        warm_up(self.model_id)  # here, before forking, so every worker inherits what it loaded
        self._workers = [self._spawn() for _ in range(self.slots)]

    def submit(self, task: CaseTask) -> str:
        worker = self._idle_worker()
        worker.connection.send(task)
        worker.task, worker.started = task, time.monotonic()
        return worker.name

    def _replace(self, worker: _LocalWorker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.connection.close()
        self._workers[self._workers.index(worker)] = self._spawn()

    def wait(self, timeout_s: float) -> list[Finished]:
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            time.sleep(timeout_s)
            return []
        by_handle: dict[Any, _LocalWorker] = {}
        for worker in busy:
            by_handle[worker.connection] = worker
            by_handle[worker.process.sentinel] = worker
        ready = wait(list(by_handle), timeout=timeout_s)
        finished: list[Finished] = []
        for worker in dict.fromkeys(by_handle[handle] for handle in ready):  # each worker once, in order
            task = worker.task
            assert task is not None
            try:
                # A result sent just before an exit is still in the pipe: read it before declaring a crash.
                outcome = worker.connection.recv() if worker.connection.poll() else None
            except (EOFError, OSError):
                outcome = None
            if outcome is not None:
                worker.task = None
                finished.append(Finished(task, outcome))
                continue
            worker.process.join(timeout=5)
            wall = time.monotonic() - worker.started
            finished.append(Finished(task, failure_outcome(
                task, CRASHED, f"{task.case_id}: worker process died ({_signal_name(worker.process.exitcode)}) "
                f"after {wall:.1f} s", wall_s=round(wall, 3), worker=worker.name)))
            self._replace(worker)
        return finished

    def close(self) -> None:
        for worker in self._workers:
            if worker.task is None:
                with contextlib.suppress(OSError):  # a worker that already went away needs no goodbye
                    worker.connection.send(None)
        for worker in self._workers:
            worker.process.join(timeout=2 if worker.task is None else 0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        self._workers = []


# -- Ray -----------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _RayWorker:
    actor: Any
    name: str
    task: CaseTask | None = None
    ref: Any = None
    started: float = 0.0


class RayPool(_WorkerPool):
    """``slots`` Ray actors, each one CPU, on the cluster at ``address`` or on a local Ray started here.

    Output folders must be on a file system that every node sees at the same path (as on any HPC cluster).
    """

    name = "ray"

    def __init__(self, model_id: str, slots: int | None, address: str | None = None) -> None:
        self.model_id = model_id
        self.slots = slots or 0
        self.address = address
        self._workers: list[_RayWorker] = []
        self._started_ray = False
        self._actor_class: Any = None

    def start(self) -> None:
        try:
            import ray
        except ImportError as e:  # pragma: no cover - ray is a dependency
            raise MedhubError(None, "the ray backend needs the ray package (pip install ray)",
                              code="bad-option") from e
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.WARNING}
            try:
                if self.address:
                    ray.init(address=self.address, **options)
                else:
                    ray.init(num_cpus=self.slots or os.cpu_count(), **options)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise MedhubError(self.address, f"cannot connect to Ray: {e}", code="ray-unavailable") from e
            self._started_ray = True
        if not self.slots:
            self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(CaseRunner)
        actors = [self._actor_class.remote(self.model_id) for _ in range(self.slots)]
        self._workers = [self._ready(actor) for actor in actors]

    def _ready(self, actor: Any) -> _RayWorker:
        import ray

        try:
            name = ray.get(actor.ready.remote(), timeout=300)
        except Exception as e:
            raise MedhubError(None, f"a Ray worker cannot start {self.model_id}: {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:500]}", code="worker-start") from e
        return _RayWorker(actor=actor, name=name)

    def submit(self, task: CaseTask) -> str:
        worker = self._idle_worker()
        worker.ref = worker.actor.run.remote(task)
        worker.task, worker.started = task, time.monotonic()
        return worker.name

    def _replace(self, worker: _RayWorker) -> None:
        import ray

        ray.kill(worker.actor, no_restart=True)
        self._workers[self._workers.index(worker)] = self._ready(self._actor_class.remote(self.model_id))

    def wait(self, timeout_s: float) -> list[Finished]:
        import ray
        from ray import exceptions as rx

        busy = {w.ref: w for w in self._workers if w.task is not None}
        if not busy:
            time.sleep(timeout_s)
            return []
        ready, _ = ray.wait(list(busy), num_returns=1, timeout=timeout_s)
        if ready:  # collect everything else that is done too
            ready, _ = ray.wait(list(busy), num_returns=len(busy), timeout=0)
        finished: list[Finished] = []
        for ref in ready:
            worker = busy[ref]
            task = worker.task
            assert task is not None
            wall = round(time.monotonic() - worker.started, 3)
            try:
                outcome = ray.get(ref)
            except rx.OutOfMemoryError as e:
                outcome = failure_outcome(task, OUT_OF_MEMORY, f"{task.case_id}: Ray killed the worker for lack "
                                          f"of memory after {wall:.1f} s ({type(e).__name__})", wall_s=wall,
                                          worker=worker.name)
            except (rx.RayActorError, rx.WorkerCrashedError) as e:
                outcome = failure_outcome(task, CRASHED, f"{task.case_id}: worker process died after {wall:.1f} s "
                                          f"({type(e).__name__})", wall_s=wall, worker=worker.name)
            except rx.RayError as e:
                outcome = failure_outcome(task, "internal-error", f"{task.case_id}: {type(e).__name__}: "
                                          f"{' '.join(str(e).split())[:300]}", wall_s=wall, worker=worker.name)
            else:
                worker.task, worker.ref = None, None
                finished.append(Finished(task, outcome))
                continue
            finished.append(Finished(task, outcome))
            self._replace(worker)
        return finished

    def close(self) -> None:
        import ray

        for worker in self._workers:
            with contextlib.suppress(Exception):  # already dead or the cluster is gone: nothing left to stop
                ray.kill(worker.actor, no_restart=True)
        self._workers = []
        if self._started_ray:
            ray.shutdown()


def make_backend(name: str, model_id: str, workers: int | None, ray_address: str | None) -> Backend:
    """The backend called ``name`` (``local`` or ``ray``) with ``workers`` slots (default: every core)."""
    if workers is not None and workers < 1:
        raise MedhubError(None, f"--workers must be at least 1 (got {workers})", code="bad-option")
    if name == "local":
        if ray_address:
            raise MedhubError(None, "--ray-address needs --backend ray", code="bad-option")
        return LocalPool(model_id, workers or available_cores())
    if name == "ray":
        return RayPool(model_id, workers, ray_address)
    raise MedhubError(None, f"unknown backend {name!r}; choose local or ray", code="bad-option")


def available_cores() -> int:
    """Cores this process may use (CPU affinity / cgroup cpusets respected, unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
