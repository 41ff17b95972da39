"""Scan positions mapped by several CPU processes at once.

On a CPU, one process with ``n`` torch threads leaves cores idle: the refinement, the score and the
ranking are many small tensor operations that torch does not split across threads (only the network's
matrix products scale). ``w`` forked processes with ``n // w`` threads each, every one mapping its
share of each chunk, keep the cores busy: ~1.2x the patterns/s of one 2-thread process on 2 cores
(two 1-thread workers; docs/benchmarks.md).

The workers are forked (Linux), so they inherit the mapper, its model and its caches without pickling;
only the tokens of each share and the results travel between processes, as numpy arrays. Elsewhere
(macOS, Windows, CUDA) and on small scans the mapping runs in the calling process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch

__all__ = ["resolve_workers", "worker_pool", "split_interleaved"]

#: Scans with fewer positions are mapped in the calling process by default: starting the workers
#: (~0.3 s each, first calls included) costs more than they save.
MIN_POSITIONS_FOR_WORKERS = 8192
#: The default never starts more processes than this (measured on 2 cores only).
MAX_DEFAULT_WORKERS = 8

_FUNCTION: Optional[Callable] = None  # what the forked workers call; set in the parent while its pool lives


def resolve_workers(workers: Optional[int], device: torch.device, num_positions: int) -> int:
    """The number of worker processes to use (1 = the calling process).

    ``workers=None`` picks ``torch.get_num_threads()`` (at most 8; each worker then gets an equal share
    of the threads) on a Linux CPU for scans of at least 8192 positions, else 1. An explicit count is
    used as given on a CPU (1 elsewhere).
    """
    if workers is not None:
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1 (or None for automatic), got {workers}")
        workers = int(workers)
    if device.type != "cpu" or not _can_fork():
        return 1
    if workers is not None:
        return workers
    if num_positions < MIN_POSITIONS_FOR_WORKERS:
        return 1
    return max(1, min(torch.get_num_threads(), MAX_DEFAULT_WORKERS))


def _can_fork() -> bool:
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


@contextlib.contextmanager
def worker_pool(function: Callable, workers: int) -> Iterator[Callable[[Iterable], Iterator]]:
    """Yield ``imap(parts)``: ``function(part)`` for every part, in order, on ``workers`` forked
    processes that share this process's torch threads (in this process when ``workers == 1``).

    ``function`` is inherited by the workers (not pickled); parts and results are pickled, so keep
    them to numpy arrays. The pool is closed when the block ends, also on errors and interrupts.
    """
    global _FUNCTION
    if workers <= 1:
        yield lambda parts: map(function, parts)
        return
    _FUNCTION = function
    try:
        threads = max(1, torch.get_num_threads() // workers)
        with multiprocessing.get_context("fork").Pool(workers, initializer=torch.set_num_threads,
                                                      initargs=(threads,)) as pool:
            yield lambda parts: pool.imap(_call, parts)
    finally:
        _FUNCTION = None


def _call(part):
    return _FUNCTION(part)


def split_interleaved(n: int, parts: int) -> list:
    """Indices of ``n`` items dealt into ``parts`` interleaved shares (every share sees the whole scan's mix
    of sparse and dense patterns, so the workers finish together)."""
    return [np.arange(k, n, parts) for k in range(min(parts, n))]
