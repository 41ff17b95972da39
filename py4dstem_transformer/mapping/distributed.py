"""A scan mapped on a Dask cluster: the same mapping, chunk by chunk, on the cluster's workers.

The caller measures the self-calibration on its sample (as in one process), then splits the scan
into chunks of consecutive positions. A chunk travels inside its task as flat numpy arrays (a
:class:`~..io.peaks.Peaks` slice, never a pickled ``BraggVectors``; not scattered, so that the scheduler
can run it again elsewhere), or, for a scan left in a file
(:class:`~..io.peaks.PeaksFile`), as ``(file, start, stop)``, and the worker reads only those positions.
The mapper goes to every worker once (``client.scatter(..., broadcast=True)``; its per-phase physics
is rebuilt there on first use and kept), and every chunk is mapped there by :func:`map_part`, the
function the calling process uses for its own chunks, so the map is the one the caller would make.
Dask reruns the chunks of a worker that dies on the others. Workers pick their own device: the job's
``device`` if one was given, else the worker's visible GPU (CUDA), else its CPU, there with one torch
thread per task (:func:`prepare_worker`: run one worker thread per core).
"""

from __future__ import annotations

import sys
import uuid
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from ..core.device import resolve_device
from ..io.peaks import Peaks, PeaksFile
from .local_cluster import Inherited
from .schedule import map_scan
from .selfcal import SelfCalibration, phases_within_reach

__all__ = ["MapJob", "map_job_tokens", "map_part", "map_scan_distributed", "prepare_worker", "heap_for_tensors"]


@dataclass(frozen=True)
class MapJob:
    """What mapping a chunk needs besides the mapper and the peaks (small, picklable).

    Attributes
    ----------
    num_matches : matches per position (validated: ``Query(...).num_matches``)
    inversion_symmetry, refine, min_angle_deg, batch_size : as ``match_orientations``
    device : str or None; None lets each worker use its own (visible GPU, else CPU)
    measured : the caller's :class:`~.selfcal.SelfCalibration` (which phases are within the detector's reach)
    """

    num_matches: int
    inversion_symmetry: bool
    refine: bool
    min_angle_deg: Optional[float]
    batch_size: Optional[int]
    device: Optional[str]
    measured: SelfCalibration


def map_job_tokens(mapper, job: MapJob, tokens, phases) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(matrix (b, P, K, 3, 3), corr (b, P, K), probability (b, P))`` of ``tokens``: the mapper's stages
    with the job's settings and ``phases`` (those within the detector's reach), ``corr`` calibrated as the
    mapper's."""
    calibration = mapper.calibration if mapper.calibrated_confidence else None
    mapped = mapper.map_tokens(tokens, job.num_matches, job.inversion_symmetry, job.refine, job.min_angle_deg,
                               job.batch_size, resolve_device(job.device), phases)
    return mapped.matrix, mapped.confidence(calibration), mapped.probability


def map_part(mapper, job: MapJob, part, chunk_size: int = 16384):
    """Map one chunk: ``part`` is a :class:`Peaks` slice or ``(PeaksFile, start, stop)``; ``mapper`` the mapper
    or an :class:`~.local_cluster.Inherited` handle to it.

    Returns ``(matrix, corr, probability, counts)`` for its positions. Runs on a Dask worker.
    """
    prepare_worker()
    if isinstance(mapper, Inherited):  # a forked local worker: its own copy of the caller's mapper
        mapper = mapper.get()
    peaks = part if isinstance(part, Peaks) else part[0].read(part[1], part[2])
    phases = phases_within_reach(mapper.phases, job.measured, mapper.self_calibration_config)
    shape = (mapper.n_phases, job.num_matches)
    return map_scan(peaks, mapper.token_config, lambda tokens: map_job_tokens(mapper, job, tokens, phases), shape,
                    chunk_size=chunk_size, progress_bar=False)


def map_scan_distributed(client, mapper, job: MapJob, source, chunk_size: int = 16384, progress_bar: bool = True,
                         shipped=None):
    """:func:`~.schedule.map_scan` over a Dask ``client``'s workers: the same four arrays, in scan order.

    ``source``: :class:`Peaks` (chunks are sent as flat arrays) or :class:`PeaksFile` (workers read their
    chunks). Progress is counted in positions, chunk by chunk as they finish. ``shipped``: what every task
    carries for the mapper instead of the mapper scattered once to every worker (forked local workers get an
    :class:`~.local_cluster.Inherited` handle to their own copy of it).
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    B, P, K = source.num_positions, mapper.n_phases, job.num_matches
    matrix, corr, probability = np.zeros((B, P, K, 3, 3)), np.zeros((B, P, K)), np.zeros((B, P))
    counts = np.zeros(B, dtype=np.int64)
    run = uuid.uuid4().hex[:8]
    # a handle rides in every task (a few bytes); scattering it would replicate the worker's object between
    # workers, pickled in full
    remote_mapper = shipped if shipped is not None else client.scatter(mapper, broadcast=True, hash=False)
    futures = {}
    with warnings.catch_warnings():
        # a chunk's peaks travel inside its task (not scattered), so the scheduler can rerun the task elsewhere
        # when a worker dies; distributed warns about any argument over a few MB
        warnings.filterwarnings("ignore", message=".*Large object of size.*")
        warnings.filterwarnings("ignore", message=".*Sending large graph.*")
        for start in range(0, B, chunk_size):
            stop = min(B, start + chunk_size)
            part = (source, start, stop) if isinstance(source, PeaksFile) else source.read(start, stop)
            future = client.submit(map_part, remote_mapper, job, part, chunk_size, key=f"p4t-map-{run}-{start}",
                                   pure=False)
            futures[future] = (start, stop)
    with tqdm(total=B, desc="matching orientations", unit="pattern", disable=not progress_bar) as bar:
        for future in as_completed(futures, loop=client.loop):  # also a client that is not the default
            start, stop = futures.pop(future)
            m, c, p, n = future.result()
            matrix[start:stop], corr[start:stop], probability[start:stop], counts[start:stop] = m, c, p, n
            bar.update(stop - start)
            future.release()
    return matrix, corr, probability, counts


def prepare_worker() -> None:
    """In a Dask task on a CPU: one torch thread, and glibc's heap kept for tensors (:func:`heap_for_tensors`;
    Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_``, which made the mapping 2.2x slower). Tasks run in the
    worker's threads, and there torch's OpenMP parallel regions cost far more than in a main thread (an
    element-wise op on 20,000 values: 5x slower with 2 threads, as fast with 1), so a CPU is used through
    one worker thread per core. Does nothing outside a Dask worker."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    heap_for_tensors()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)


def heap_for_tensors() -> bool:
    """In a Dask worker process: let glibc keep freed memory (trim threshold
    256 MB) and serve allocations up to 32 MB from its heap, instead of mapping and unmapping pages for
    every tensor. Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins the
    mmap threshold at 128 kB: a 192 x 192 scan then mapped 2.2x slower (43.5 s instead of 19.9 s on one
    thread), and 16.8 s with this. Returns False where there is no glibc (macOS, Windows)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
        return bool(libc.mallopt(m_trim_threshold, 256 << 20)) and bool(libc.mallopt(m_mmap_threshold, 32 << 20))
    except (OSError, AttributeError):
        return False
