"""Several processes on this machine, through Dask: ``workers=`` is a Dask cluster of this machine's cores.

``match_orientations(..., workers=n)`` (and ``find_bragg_disks(..., workers=n)``) start a
``distributed.LocalCluster`` of ``n`` worker processes for the call and map through it exactly as
through a user's own ``client=`` (:mod:`.distributed`): one code path, whatever the cluster. The
cluster lives for the call only (nothing lingers between calls; a user who wants a lasting one passes
``client=``).

The workers are forked (Dask's ``multiprocessing-method: fork``): they start in ~0.3 s with torch and
this package already imported, as the home-made pool this replaces did, and they hold a copy of this
process's memory. So the mapper goes to them as an :class:`Inherited` handle: a key in every task, which the
task turns into the worker's own copy of the caller's mapper, per-phase physics and search library
included (built once here, not once per worker). Everything else (chunks, tasks, the assembly) is the
``client=`` path. Forking needs Linux; elsewhere (macOS, Windows), on a GPU (one device, one process) and
on small scans the default maps in the calling process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import sys
import time
import uuid
import warnings
from typing import Iterator, Optional

import torch

__all__ = ["resolve_workers", "local_client", "Inherited", "local_chunk_size", "task_threads", "can_fork",
           "MIN_POSITIONS_FOR_WORKERS", "ShutdownHeartbeatNoise"]

#: Scans with fewer positions are mapped in the calling process by default: starting the cluster (~0.3 s),
#: the search library built before it, and the tasks' own costs outweigh what the workers save.
MIN_POSITIONS_FOR_WORKERS = 8192
#: The default never starts more processes than this (measured on 2 cores only).
MAX_DEFAULT_WORKERS = 8
#: Tasks per worker a local scan is cut into (dynamic load balance: dense and vacuum regions differ).
TASKS_PER_WORKER = 4


def resolve_workers(workers: Optional[int], device: torch.device, num_positions: int) -> int:
    """The number of worker processes to use (1 = the calling process).

    ``workers=None`` picks ``torch.get_num_threads()`` (at most 8) on a Linux CPU for scans of at least
    8192 positions, else 1. An explicit count is used as given on a Linux CPU (1 elsewhere, and inside a
    daemon process such as a Dask worker, which may not start processes of its own).
    """
    if workers is not None:
        if isinstance(workers, bool) or int(workers) < 1:
            raise ValueError(f"workers must be an integer >= 1 (or None for automatic), got {workers!r}")
        workers = int(workers)
    if device.type != "cpu" or not can_fork() or multiprocessing.current_process().daemon:
        return 1
    if workers is not None:
        return workers
    if num_positions < MIN_POSITIONS_FOR_WORKERS:
        return 1
    return max(1, min(torch.get_num_threads(), MAX_DEFAULT_WORKERS))


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def local_chunk_size(num_positions: int, workers: int, chunk_size: int) -> int:
    """Positions per task on a local cluster of ``workers`` processes: about :data:`TASKS_PER_WORKER` tasks per
    task thread, at most ``chunk_size`` (the memory bound), at least 256 (per-task costs)."""
    slots = int(workers) * task_threads(workers)
    per_task = -(-int(num_positions) // (slots * TASKS_PER_WORKER))
    return int(max(1, min(int(chunk_size), max(256, per_task))))


def task_threads(workers: int) -> int:
    """Task threads per local worker process: this process's torch threads shared out."""
    return max(1, torch.get_num_threads() // int(workers))


#: Objects forked local workers find in their copy of this process's memory (:class:`Inherited`).
_INHERITED: dict = {}


class Inherited:
    """A handle to an object of this process: it pickles to its key alone, and :meth:`get` returns the object in
    this process and in any process forked from it after the handle was made (a :func:`local_client` worker).
    Dask's scheduler unpickles and pickles task arguments again on their way, so the handle stays a handle
    until the task itself calls :meth:`get`."""

    def __init__(self, obj=None, key: Optional[str] = None):
        self.key = key or uuid.uuid4().hex
        if key is None:
            _INHERITED[self.key] = obj

    def __reduce__(self):
        return Inherited, (None, self.key)

    def get(self):
        """The object; KeyError in a process that was not forked from its owner after the handle was made."""
        try:
            return _INHERITED[self.key]
        except KeyError:
            raise KeyError(f"no inherited object {self.key}: this process was not forked from the one that made the "
                           "handle (send the object itself to workers of other clusters)") from None

    def release(self) -> None:
        _INHERITED.pop(self.key, None)


@contextlib.contextmanager
def local_client(workers: int) -> Iterator:
    """A ``distributed.Client`` on a new ``LocalCluster`` of ``workers`` forked processes, closed when the block
    ends (also on errors and interrupts). An :class:`Inherited` made before the block reaches the workers.

    Each process runs ``max(1, torch.get_num_threads() // workers)`` task threads (one torch thread each,
    :func:`.distributed.prepare_worker`), so the workers share this process's threads as the pool did. No
    dashboard, no memory limit (the nanny would otherwise kill a worker over its share of RAM and rerun its
    task forever), quiet logs, and the client is not made Dask's default (the user's own stays theirs).
    """
    if not can_fork():
        raise RuntimeError("local worker processes are forked and need Linux; use workers=1, or pass client= "
                           "with a cluster of your own")
    threads = task_threads(workers)
    worker_log = logging.getLogger("distributed.worker")
    quiet = ShutdownHeartbeatNoise()
    worker_log.addFilter(quiet)  # forked with it, the workers keep it; this process drops it when the block ends
    try:
        cluster, client = _start(workers, threads)
        try:
            with client:
                yield client
        finally:
            cluster.close()
    finally:
        worker_log.removeFilter(quiet)


class ShutdownHeartbeatNoise(logging.Filter):
    """Drops ``distributed``'s "Failed to communicate with scheduler during heartbeat" (an error with a traceback)
    in a local cluster's workers. Their scheduler runs in the process that forked them and they die with it, so
    a heartbeat that fails there is one racing the cluster's close (dask/distributed#7105: seen once in three
    scans here, 2026-12-05, after a complete and right map), never a lost scheduler; every other record passes."""

    MESSAGE = "Failed to communicate with scheduler during heartbeat"

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.MESSAGE)


#: Seconds the worker processes get to start (they take ~0.3 s) before the cluster is started again, once.
START_TIMEOUT_S = 60.0


def _start(workers: int, threads: int, timeout: Optional[float] = None, attempts: int = 2):
    """A ``(LocalCluster, Client)`` whose ``workers`` processes have all registered.

    A process forked while another thread of this one holds a lock (a log stream's, say) can wait on it for
    ever; a start that takes longer than ``timeout`` (default :data:`START_TIMEOUT_S`) is given up (its
    processes killed) and tried again, ``attempts`` times in all, then a clear error says what to do.
    """
    import dask
    from distributed import Client, LocalCluster

    timeout = START_TIMEOUT_S if timeout is None else float(timeout)
    for attempt in range(1, attempts + 1):
        before = {p.pid for p in _running_children()}
        with dask.config.set({"distributed.worker.multiprocessing-method": "fork",
                              "distributed.worker.daemon": True,
                              # the worker's sampling profiler walks the task thread's stack every 10 ms, holding
                              # the GIL our many small tensor operations need
                              "distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=0, threads_per_worker=threads, processes=True,
                                   memory_limit=0, dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster, set_as_default=False)
            try:
                cluster.scale(int(workers))
                client.wait_for_workers(int(workers), timeout=timeout)
                return cluster, client
            except (TimeoutError, asyncio.TimeoutError):
                pass
            except BaseException:  # anything else (an interrupt, say): no half-started cluster is left behind
                _abandon(cluster, client, before)
                raise
        _abandon(cluster, client, before)
        if attempt < attempts:
            warnings.warn(f"the {workers} local worker processes did not start within {timeout:.0f} s; "
                          "starting them again", RuntimeWarning, stacklevel=4)
    raise RuntimeError(f"the {workers} local worker processes did not start within {timeout:.0f} s, {attempts} "
                       "times; pass workers=1 to work in this process, or client= with a cluster of your own")


#: Seconds a cluster that did not start is given to close before its processes are killed.
CLOSE_TIMEOUT_S = 10.0


def _abandon(cluster, client, before: set) -> None:
    """Close a cluster that did not start, and kill whichever of its forked processes are still running.

    First every nanny is told not to restart its worker (``Nanny.close_gracefully``): a nanny whose worker
    dies while it is running starts another. The scaling makes its nannies in the cluster's own thread, so one
    may appear after that (CI, 2026-12-04: a start that failed at once left a nanny restarting each worker the
    sweep killed); each round of the sweep below tells the nannies again. Then the cluster closes, which waits
    for the nannies; but it may take longer than :data:`CLOSE_TIMEOUT_S` (a worker still starting, or hung), so
    the closing is followed by a sweep of this process's forked copies as the operating system lists them
    (:func:`_running_children`): whichever was not running before the start is killed, until none has appeared
    for a second (at most 10 s).
    """
    _stop_restarts(cluster)
    for close in (client.close, cluster.close):
        try:
            close(timeout=CLOSE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a half-started cluster may fail to close; its processes go below
            pass
    import psutil

    deadline, quiet_since = time.monotonic() + 10.0, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 1.0:
        _stop_restarts(cluster)  # again: a nanny the scaling made after the first call restarts what is killed
        alive = [p for p in _running_children() if p.pid not in before]
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if alive:
            psutil.wait_procs(alive, timeout=1)
            quiet_since = time.monotonic()
        time.sleep(0.1)


def _stop_restarts(cluster) -> None:
    """Tell every nanny the cluster has made so far not to restart its worker (``Nanny.close_gracefully``, a
    status flag, so it may be set from this thread)."""
    for nanny in _nannies(cluster):
        with contextlib.suppress(Exception):
            nanny.close_gracefully(reason="the local cluster did not start")


def _nannies(cluster) -> list:
    """Every worker object (nanny) the cluster has made, started or still starting. ``cluster.workers`` lists
    them only once all have started; ``SpecCluster._created`` holds them from the moment they are made."""
    made = getattr(cluster, "_created", None)
    return list(made) if made is not None else list(getattr(cluster, "workers", {}).values())


def _running_children() -> list:
    """This process's running forked copies (its children with its own command line, zombies left out), as
    ``psutil.Process`` objects: the workers a cluster forks, not helpers Python starts for itself (such as
    ``multiprocessing``'s resource tracker, which is started afresh, not forked).

    Asked of the operating system, not of ``multiprocessing``: a process forked a moment ago is listed before
    ``multiprocessing`` records it, and ``Process.is_alive()`` can call a process reaped by another thread
    (Dask watches each worker with a thread blocked in ``waitpid``) still alive.
    """
    import psutil

    me = psutil.Process()
    command = me.cmdline()
    children = []
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE and child.cmdline() == command:
                children.append(child)
    return children
