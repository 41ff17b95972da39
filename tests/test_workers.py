"""``workers=``: this machine's processes as a Dask LocalCluster, the client= path; the same map, sensible defaults."""

import multiprocessing
import os
import sys
import time

import numpy as np
import pytest
import torch

from py4dstem_transformer.mapping import mapper as mapper_module
from py4dstem_transformer.mapping.local_cluster import (MIN_POSITIONS_FOR_WORKERS, Inherited, ShutdownHeartbeatNoise,
                                                        local_chunk_size, local_client, resolve_workers)
from py4dstem_transformer.mapping.mapper import TransformerOrientationMap

from conftest import KinematicSet, kinematic_scan, make_cu

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="local workers are forked on Linux only")


@linux
def test_resolve_workers_defaults(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_workers(None, cpu, MIN_POSITIONS_FOR_WORKERS - 1) == 1  # small scans stay in the calling process
    assert resolve_workers(None, cpu, 10**6) == max(1, min(torch.get_num_threads(), 8))
    assert resolve_workers(3, cpu, 100) == 3
    assert resolve_workers(3, torch.device("cuda"), 10**6) == 1  # one GPU, one process
    with monkeypatch.context() as m:  # e.g. a mapping inside a user's Dask task: no processes of its own
        m.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
        assert resolve_workers(None, cpu, 10**6) == 1 and resolve_workers(3, cpu, 10**6) == 1
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            resolve_workers(bad, cpu, 100)


def test_local_chunks_balance_the_workers_within_the_memory_bound():
    threads = torch.get_num_threads()
    slots = 2 * max(1, threads // 2)
    size = local_chunk_size(65536, 2, 16384)
    assert size == min(16384, max(256, -(-65536 // (slots * 4))))
    assert -(-65536 // size) >= 2 * 4 or size == 16384  # several tasks per worker unless the bound decides
    assert local_chunk_size(10**7, 2, 16384) == 16384  # never above chunk_size (memory)
    assert local_chunk_size(1000, 2, 16384) == 256  # nor below 256 positions (per-task costs)
    assert local_chunk_size(1000, 2, 100) == 100


@linux
def test_local_client_runs_tasks_in_other_processes_and_leaves_nothing_behind():
    import dask
    import distributed
    import psutil

    scheduler_before = dask.config.get("scheduler", None)
    with local_client(2) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        pids = client.gather(client.map(lambda x: os.getpid(), range(8), pure=False))
        squares = client.gather(client.map(lambda x: x * x, range(6)))
        children = psutil.Process().children(recursive=True)
    assert squares == [0, 1, 4, 9, 16, 25]
    assert os.getpid() not in pids and len(set(pids)) >= 1
    assert dask.config.get("scheduler", None) == scheduler_before  # the user's default scheduler is left alone
    with pytest.raises(ValueError):
        distributed.default_client()  # and no default client was made
    alive = [p for p in children if p.pid in pids and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, "worker processes outlived the call"


def _heartbeat_records_kept():
    """In a worker: which of two ERROR records of ``distributed.worker`` its filters let through."""
    import logging

    log = logging.getLogger("distributed.worker")
    make = lambda msg: log.makeRecord(log.name, logging.ERROR, __file__, 1, msg, (), None)  # noqa: E731
    return [bool(log.filter(make("Failed to communicate with scheduler during heartbeat."))),
            bool(log.filter(make("Compute Failed")))]


@linux
def test_the_workers_drop_only_the_heartbeat_error_of_a_closing_cluster():
    """The shutdown race of dask/distributed#7105 logs a traceback from a worker; the local cluster's workers drop
    that one record (they die with the scheduler's process) and keep every other; this process keeps all."""
    import logging

    with local_client(2) as client:
        kept = client.gather(client.map(lambda _: _heartbeat_records_kept(), range(2), pure=False))
    assert all(not heartbeat and other for heartbeat, other in kept)
    assert not any(isinstance(f, ShutdownHeartbeatNoise) for f in logging.getLogger("distributed.worker").filters)
    assert _heartbeat_records_kept() == [True, True]


@linux
def test_a_cluster_whose_workers_do_not_start_is_killed_retried_and_then_named(monkeypatch):
    """A forked worker can hang on a lock another thread held at the fork: a start past the timeout is given up,
    its processes killed, tried once more, then a clear error says what to do. (The hang is stood in for by a
    wait that times out; the processes it started are real.)"""
    import distributed

    from py4dstem_transformer.mapping.local_cluster import _start

    waits = []

    def hung(self, n_workers, timeout=None):
        waits.append((n_workers, timeout))
        raise TimeoutError(f"only 0/{n_workers} workers arrived after {timeout}")

    monkeypatch.setattr(distributed.Client, "wait_for_workers", hung)
    before = {p.pid for p in _new_live_children(set())}
    with pytest.warns(RuntimeWarning, match="did not start within 7 s; starting them again"):
        with pytest.raises(RuntimeError, match="did not start within 7 s, 2 times; pass workers=1"):
            _start(2, 1, timeout=7.0, attempts=2)
    assert waits == [(2, 7.0), (2, 7.0)]
    assert not _new_live_children(before)


@linux
def test_a_start_that_fails_otherwise_leaves_no_processes_behind(monkeypatch):
    import distributed

    from py4dstem_transformer.mapping.local_cluster import _start

    def broken(self, n_workers, timeout=None):
        raise ValueError("something else went wrong")

    monkeypatch.setattr(distributed.Client, "wait_for_workers", broken)
    before = {p.pid for p in _new_live_children(set())}
    with pytest.raises(ValueError, match="something else"):
        _start(2, 1, timeout=7.0)
    assert not _new_live_children(before)


@linux
def test_a_start_that_fails_while_a_worker_is_still_starting_leaves_no_processes_behind(monkeypatch):
    """CI, 2026-12-03: the start failed while one worker was still starting, the close outlasted its timeout,
    and the other worker's nanny restarted each worker the clean-up killed. Stood in for: worker 1 takes 6 s to
    start (in the forked process itself), the close is given 2 s."""
    import asyncio

    import distributed

    from py4dstem_transformer.mapping import local_cluster

    start = distributed.Worker.start_unsafe

    async def slow_second(self):
        if self.name == 1:
            await asyncio.sleep(6)
        return await start(self)

    def broken(self, n_workers, timeout=None):
        time.sleep(1.5)  # worker 0 is up by now
        raise ValueError("something else went wrong")

    monkeypatch.setattr(distributed.Worker, "start_unsafe", slow_second)
    monkeypatch.setattr(distributed.Client, "wait_for_workers", broken)
    monkeypatch.setattr(local_cluster, "CLOSE_TIMEOUT_S", 2.0)
    before = {p.pid for p in _new_live_children(set())}
    with pytest.raises(ValueError, match="something else"):
        local_cluster._start(2, 1, timeout=30.0)
    assert not _new_live_children(before)
    time.sleep(2)  # nothing is started again a moment later either
    assert not _new_live_children(before)


@linux
def test_a_nanny_made_after_the_clean_up_began_does_not_restart_what_it_kills(monkeypatch):
    """CI, 2026-12-04: a start that failed at once, before the cluster's thread had made its nannies; the
    cluster's close then outlasted its timeout without closing them, and a nanny restarted each worker the
    sweep killed. Stood in for: the clean-up's first look finds no nanny, and the close does nothing."""
    import distributed

    from py4dstem_transformer.mapping import local_cluster

    def broken(self, n_workers, timeout=None):
        time.sleep(1.5)  # both workers are up by now
        raise ValueError("something else went wrong")

    nannies, looks, clusters = local_cluster._nannies, [], []

    def late(cluster):
        looks.append(1)
        return [] if len(looks) == 1 else nannies(cluster)

    close = distributed.LocalCluster.close
    monkeypatch.setattr(distributed.Client, "wait_for_workers", broken)
    monkeypatch.setattr(distributed.LocalCluster, "close", lambda self, timeout=None: clusters.append(self))
    monkeypatch.setattr(local_cluster, "_nannies", late)
    before = {p.pid for p in _new_live_children(set())}
    try:
        with pytest.raises(ValueError, match="something else"):
            local_cluster._start(2, 1, timeout=30.0)
        assert not _new_live_children(before)
        time.sleep(2)  # nothing is started again a moment later either
        assert not _new_live_children(before)
    finally:
        for cluster in clusters:
            close(cluster, timeout=10)


def _new_live_children(before: set) -> list:
    """Running (not zombie) forked copies of this process (children with its command line, not Python's own
    helpers such as the resource tracker), as the operating system lists them, that were not among ``before``
    (pids). Not ``multiprocessing.active_children()``: its ``is_alive()`` calls a child that another thread has
    just reaped alive."""
    import psutil

    me = psutil.Process()
    running = []
    for child in me.children(recursive=True):
        try:
            if (child.pid not in before and child.status() != psutil.STATUS_ZOMBIE
                    and child.cmdline() == me.cmdline()):
                running.append(child)
        except psutil.NoSuchProcess:
            pass
    return running


class _Unpicklable:
    """Stands for a mapper with its physics built: it must reach forked workers without being pickled."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        raise TypeError("this object must not be pickled")


def test_an_inherited_handle_pickles_to_a_key_and_gives_the_object_back():
    import pickle

    obj = _Unpicklable(41)
    handle = Inherited(obj)
    data = pickle.dumps(handle)
    assert len(data) < 200  # a key, not the object
    copy = pickle.loads(pickle.dumps(pickle.loads(data)))  # a scheduler may unpickle and pickle it again
    assert isinstance(copy, Inherited) and copy.get() is obj
    handle.release()
    with pytest.raises(KeyError, match="not forked"):
        copy.get()  # a process that does not hold the object cannot have it


@linux
def test_forked_local_workers_find_an_inherited_object_without_pickling_it():
    obj = _Unpicklable(41)
    handle = Inherited(obj)
    try:
        with local_client(2) as client:
            got = client.gather([client.submit(lambda h, x: (h.get().value + x, os.getpid()), handle, x, pure=False)
                                 for x in range(4)])
    finally:
        handle.release()
    assert [v for v, _ in got] == [41, 42, 43, 44]
    assert os.getpid() not in {pid for _, pid in got}


@pytest.mark.slow
@linux
def test_workers_give_the_same_map_through_a_local_cluster(trained, monkeypatch):
    """Each position's answer lands in its own place. Tasks batch differently (padding, one thread), so a
    near-tie between a candidate and its flip partner may rank the other way: compare the best matches up
    to symmetry, and demand all but a few of them equal."""
    from py4dstem_transformer.core.rotations import symmetry_min_angle

    started = []

    def spy(workers):
        started.append(workers)
        return local_client(workers)

    monkeypatch.setattr(mapper_module, "local_client", spy)
    truth = KinematicSet(40, seed=11)
    scan = kinematic_scan(truth, (5, 8))
    maps = {}
    for workers in (1, 2):
        mapper = TransformerOrientationMap(make_cu(), trained, workers=workers, precision="fp32")
        maps[workers] = mapper.match_orientations(scan, progress_bar=False, chunk_size=16)
    assert started == [2]  # workers=2 went through a Dask cluster, workers=1 stayed here
    one, two = (torch.as_tensor(maps[w].matrix[:, :, 0].reshape(-1, 3, 3)) for w in (1, 2))
    angle = torch.rad2deg(symmetry_min_angle(one, two, torch.as_tensor(mapper.symmetry))).numpy()
    same = angle < 0.01
    assert same.sum() >= 38
    np.testing.assert_allclose(maps[2].corr.reshape(-1)[same], maps[1].corr.reshape(-1)[same], atol=1e-3)
    assert (maps[1].corr > 0).mean() > 0.9
