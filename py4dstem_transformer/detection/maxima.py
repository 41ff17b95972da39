"""Local maxima of a batch of smoothed correlations, filtered as py4DSTEM filters them.

Same rules as ``py4DSTEM.preprocess.utils.get_maxima_2D`` / ``filter_2D_maxima``, for a batch:

1. a pixel is a maximum if it is ``>=`` its neighbours at +1 (x, y, diagonal +1 +1 and -1 +1) and
   ``>`` the others (py4DSTEM's exact tie rule), and at least ``edgeBoundary`` (>= 1) pixels from every edge;
2. maxima are ranked by value, brightest first, in each pattern;
3. dropped, in this order: below ``minAbsoluteIntensity``; below ``minRelativeIntensity`` times the
   ``relativeToPeak``-th brightest; within ``minPeakSpacing`` pixels of a brighter maximum that was
   kept (greedy, brightest first); beyond the first ``maxNumPeaks``.

Candidates are flat (CSR-like): one entry per maximum, with the index of its pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Maxima", "local_maxima", "filter_maxima", "brightest_first"]

@dataclass
class Maxima:
    """Maxima of a batch, brightest first within each pattern.

    Attributes
    ----------
    pattern : (M,) int64, the pattern (index in the batch) of each maximum, non-decreasing
    x, y : (M,) int64, pixel position
    value : (M,) float32, the smoothed correlation there
    """

    pattern: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    value: torch.Tensor

    def __len__(self) -> int:
        return len(self.pattern)

    def select(self, keep: torch.Tensor) -> "Maxima":
        return Maxima(self.pattern[keep], self.x[keep], self.y[keep], self.value[keep])


def local_maxima(ar: torch.Tensor, edge_boundary: int = 1, min_absolute: float = 0.0) -> Maxima:
    """The local maxima of every (X, Y) image of ``ar`` (B, X, Y), ranked per image, brightest first."""
    b, nx, ny = ar.shape
    e = max(1, int(edge_boundary))
    if nx - 2 * e <= 0 or ny - 2 * e <= 0:
        empty = torch.zeros(0, dtype=torch.int64, device=ar.device)
        return Maxima(empty, empty, empty, torch.zeros(0, dtype=ar.dtype, device=ar.device))

    # candidates: >= all 8 neighbours (a 3 x 3 maximum filter, separable: 4 passes); the strict half of
    # py4DSTEM's rule (> the neighbours at -1 x, -1 y, (+1, -1) and (-1, -1)) is then checked on the few candidates
    inner = ar[:, e - 1 : nx - e + 1, :]
    rows = torch.maximum(torch.maximum(inner[:, :, e - 1 : ny - e - 1], inner[:, :, e + 1 : ny - e + 1]), inner[:, :, e : ny - e])
    window = torch.maximum(torch.maximum(rows[:, :-2], rows[:, 2:]), rows[:, 1:-1])
    c = ar[:, e : nx - e, e : ny - e]
    mask = c >= window
    if min_absolute > 0:
        mask &= c >= min_absolute  # py4DSTEM drops intensity < minAbsoluteIntensity
    pattern, i, j = mask.nonzero(as_tuple=True)
    i, j = i + e, j + e
    v = ar[pattern, i, j]
    strict = (v > ar[pattern, i - 1, j]) & (v > ar[pattern, i, j - 1]) & (v > ar[pattern, i + 1, j - 1]) & (v > ar[pattern, i - 1, j - 1])
    pattern, i, j, value = pattern[strict], i[strict], j[strict], v[strict]
    order = brightest_first(pattern, value)
    return Maxima(pattern[order], i[order], j[order], value[order])


def brightest_first(pattern: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The order that groups entries by pattern and puts each pattern's brightest first (stable in ties)."""
    order = torch.argsort(value, descending=True, stable=True)
    return order[torch.argsort(pattern[order], stable=True)]


def _rank(pattern: torch.Tensor, n_patterns: int):
    """Rank of every entry within its pattern (entries grouped by pattern) and each pattern's count."""
    counts = torch.bincount(pattern, minlength=n_patterns)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(len(pattern), device=pattern.device) - starts[pattern], counts


def filter_maxima(
    maxima: Maxima,
    n_patterns: int,
    min_relative: float = 0.0,
    relative_to_peak: int = 0,
    min_spacing: float = 0.0,
    max_num_peaks=None,
) -> Maxima:
    """py4DSTEM's ``filter_2D_maxima`` for every pattern of the batch (the absolute cut is in :func:`local_maxima`)."""
    if len(maxima) == 0:
        return maxima
    if min_relative > 0:
        rank, counts = _rank(maxima.pattern, n_patterns)
        at = (rank == relative_to_peak).nonzero(as_tuple=True)[0]
        reference = torch.full((n_patterns,), float("nan"), dtype=maxima.value.dtype, device=maxima.value.device)
        reference[maxima.pattern[at]] = maxima.value[at]
        ref = reference[maxima.pattern]
        # patterns with no more than relativeToPeak maxima are not filtered (py4DSTEM's rule); NaN compares False
        maxima = maxima.select(~(maxima.value / ref < min_relative))
    if min_spacing > 0 and len(maxima):
        maxima = maxima.select(_greedy_spacing(maxima, n_patterns, float(min_spacing), max_num_peaks))
    if max_num_peaks is not None and len(maxima):
        rank, _ = _rank(maxima.pattern, n_patterns)
        maxima = maxima.select(rank < int(max_num_peaks))
    return maxima


def _greedy_spacing(maxima: Maxima, n_patterns: int, spacing: float, limit=None) -> torch.Tensor:
    """(M,) bool: kept by the brightest-first greedy rule (no brighter kept maximum closer than ``spacing``).

    In rounds, all patterns at once: each round keeps every pattern's brightest remaining maximum and
    drops the remaining ones within ``spacing`` of it; it stops after ``limit`` rounds (``maxNumPeaks``:
    later ones would be cut anyway) or when nothing remains.
    """
    rank, counts = _rank(maxima.pattern, n_patterns)
    dev = maxima.value.device
    width = int(counts.max())
    xy = torch.zeros((n_patterns, width, 2), dtype=torch.float64, device=dev)
    remaining = torch.zeros((n_patterns, width), dtype=torch.bool, device=dev)
    xy[maxima.pattern, rank, 0], xy[maxima.pattern, rank, 1] = maxima.x.double(), maxima.y.double()
    remaining[maxima.pattern, rank] = True
    kept = torch.zeros_like(remaining)
    rows = torch.arange(n_patterns, device=dev)
    rounds = width if limit is None else min(width, int(limit))
    for _ in range(rounds):
        has = remaining.any(1)
        if not bool(has.any()):
            break
        first = remaining.to(torch.uint8).argmax(1)  # the brightest remaining (first in rank order)
        kept[rows[has], first[has]] = True
        d2 = ((xy - xy[rows, first][:, None, :]) ** 2).sum(-1)
        remaining &= ~(d2 < spacing**2)  # drops the kept one itself too (distance 0)
    return kept[maxima.pattern, rank]
