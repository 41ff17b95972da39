"""A whole scan through the pipeline: chunks of positions (memory stays bounded by the chunk; a
:class:`~..io.peaks.PeaksFile` is read a chunk at a time), shared out to worker processes on a CPU
(:mod:`.workers`), with a progress bar. The same over a Dask cluster: :mod:`.distributed`."""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np
import torch

from ..model.tokens import TokenConfig, Tokens, position_tokens
from .workers import split_interleaved, worker_pool

__all__ = ["map_scan"]


def map_scan(peaks, token_config: TokenConfig, map_tokens: Callable[[Tokens], Tuple[np.ndarray, ...]],
             shape: Tuple[int, int], workers: int = 1, chunk_size: int = 16384,
             progress_bar: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``map_tokens(tokens) -> (matrix (b, P, K, 3, 3), corr (b, P, K), probability (b, P))`` over every
    position of ``peaks``; returns the same three arrays for all B positions (``shape = (P, K)``) and the
    (B,) peak counts.

    ``peaks``: :class:`~..io.peaks.Peaks`, or a :class:`~..io.peaks.PeaksFile` read one chunk at a time.
    ``map_tokens`` runs in ``workers`` forked processes (each gets an interleaved share of every chunk;
    only numpy arrays travel) or, with ``workers=1``, here.
    """
    from tqdm.auto import tqdm

    B, (P, K) = peaks.num_positions, shape
    matrix, corr, probability = np.zeros((B, P, K, 3, 3)), np.zeros((B, P, K)), np.zeros((B, P))
    counts = np.zeros(B, dtype=np.int64)
    bar = tqdm(total=B, desc="matching orientations", unit="pattern", disable=not progress_bar)
    with worker_pool(lambda part: map_tokens(Tokens(*(torch.from_numpy(np.ascontiguousarray(a)) for a in part))),
                     workers) as imap:
        for start in range(0, B, chunk_size):
            stop = min(B, start + chunk_size)
            part = peaks.read(start, stop)
            tokens = position_tokens(part, 0, stop - start, token_config)
            counts[start:stop] = part.counts
            shares = split_interleaved(len(tokens), workers)
            parts = ((tokens.tokens[i].numpy(), tokens.mask[i].numpy(), tokens.counts[i].numpy()) for i in shares)
            for i, (m, c, prob) in zip(shares, imap(parts)):
                matrix[start + i], corr[start + i], probability[start + i] = m, c, prob
                bar.update(len(i))
    bar.close()
    return matrix, corr, probability, counts
