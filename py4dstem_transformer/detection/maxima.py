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

__all__ = ["Maxima", "local_maxima", "filter_maxima"]

#: Bound on the pairwise-distance table of one greedy spacing pass (booleans).
_PAIRS = 1 << 25


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

    def nb(dx, dy):
        return ar[:, e + dx : nx - e + dx, e + dy : ny - e + dy]

    c = nb(0, 0)
    mask = (c >= nb(1, 0)) & (c > nb(-1, 0)) & (c >= nb(0, 1)) & (c > nb(0, -1))
    mask &= (c >= nb(1, 1)) & (c > nb(1, -1)) & (c >= nb(-1, 1)) & (c > nb(-1, -1))
    if min_absolute > 0:
        mask &= c >= min_absolute  # py4DSTEM drops intensity < minAbsoluteIntensity
    pattern, i, j = mask.nonzero(as_tuple=True)
    value = c[pattern, i, j]
    order = torch.argsort(value, descending=True, stable=True)
    order = order[torch.argsort(pattern[order], stable=True)]  # by pattern, brightest first within each
    return Maxima(pattern[order], i[order] + e, j[order] + e, value[order])


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
        maxima = maxima.select(_greedy_spacing(maxima, n_patterns, float(min_spacing)))
    if max_num_peaks is not None and len(maxima):
        rank, _ = _rank(maxima.pattern, n_patterns)
        maxima = maxima.select(rank < int(max_num_peaks))
    return maxima


def _greedy_spacing(maxima: Maxima, n_patterns: int, spacing: float) -> torch.Tensor:
    """(M,) bool: kept by the brightest-first greedy rule (no brighter kept maximum closer than ``spacing``)."""
    rank, counts = _rank(maxima.pattern, n_patterns)
    keep = torch.zeros(len(maxima), dtype=torch.bool, device=maxima.value.device)
    width = int(counts.max())
    # patterns in groups small enough for a (group, width, width) table
    per_group = max(1, _PAIRS // max(1, width * width))
    starts = torch.cumsum(counts, 0) - counts
    for g0 in range(0, n_patterns, per_group):
        g1 = min(n_patterns, g0 + per_group)
        lo, hi = int(starts[g0]), int(starts[g1 - 1] + counts[g1 - 1])
        if hi == lo:
            continue
        sel = slice(lo, hi)
        p, r = maxima.pattern[sel] - g0, rank[sel]
        w = int(counts[g0:g1].max())
        xy = torch.full((g1 - g0, w, 2), float("inf"), dtype=torch.float64, device=keep.device)
        valid = torch.zeros((g1 - g0, w), dtype=torch.bool, device=keep.device)
        xy[p, r, 0], xy[p, r, 1] = maxima.x[sel].double(), maxima.y[sel].double()
        valid[p, r] = True
        d2 = (xy[:, :, None, 0] - xy[:, None, :, 0]) ** 2 + (xy[:, :, None, 1] - xy[:, None, :, 1]) ** 2
        close = (d2 < spacing**2) & torch.ones(w, w, dtype=torch.bool, device=keep.device).tril(-1)  # brighter j < i
        kept = valid.clone()
        # fixed point of kept[i] = valid[i] and no kept j < i is close; exact after at most w passes
        for _ in range(w + 1):
            new = valid & ~(close & kept[:, None, :]).any(-1)
            if torch.equal(new, kept):
                break
            kept = new
        keep[sel] = kept[p, r]
    return keep
