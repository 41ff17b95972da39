"""A whole scan through the pipeline in the calling process: chunks of positions (memory stays bounded by
the chunk; a :class:`~..io.peaks.PeaksFile` is read a chunk at a time), with a progress bar. Several
processes (``workers=``, :mod:`.local_cluster`) or a Dask cluster (``client=``) run this on chunks of
the scan: :mod:`.distributed`."""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

from ..model.tokens import TokenConfig, Tokens, position_tokens

__all__ = ["map_scan"]


def map_scan(peaks, token_config: TokenConfig, map_tokens: Callable[[Tokens], Tuple[np.ndarray, ...]],
             shape: Tuple[int, int], chunk_size: int = 16384,
             progress_bar: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``map_tokens(tokens) -> (matrix (b, P, K, 3, 3), corr (b, P, K), probability (b, P))`` over every
    position of ``peaks``; returns the same three arrays for all B positions (``shape = (P, K)``) and the
    (B,) peak counts.

    ``peaks``: :class:`~..io.peaks.Peaks`, or a :class:`~..io.peaks.PeaksFile` read one chunk at a time.
    """
    from tqdm.auto import tqdm

    B, (P, K) = peaks.num_positions, shape
    matrix, corr, probability = np.zeros((B, P, K, 3, 3)), np.zeros((B, P, K)), np.zeros((B, P))
    counts = np.zeros(B, dtype=np.int64)
    bar = tqdm(total=B, desc="matching orientations", unit="pattern", disable=not progress_bar)
    for start in range(0, B, chunk_size):
        stop = min(B, start + chunk_size)
        part = peaks.read(start, stop)
        counts[start:stop] = part.counts
        m, c, prob = map_tokens(position_tokens(part, 0, stop - start, token_config))
        matrix[start:stop], corr[start:stop], probability[start:stop] = m, c, prob
        bar.update(stop - start)
    bar.close()
    return matrix, corr, probability, counts
