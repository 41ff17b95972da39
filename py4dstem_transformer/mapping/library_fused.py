"""The library's ranking as one compiled pass per pattern (CPU): only the raster near the observed disks.

:func:`.library.library_hypotheses` reads every library disk (``size * disks``: 640,000 for the default
library) from the whole raster of each pattern (``side ** 2`` pixels: 87,000). A pattern's raster is a sum of
Gaussians around its own disks and zero elsewhere, so this pass writes only the pixels within ``radius`` of an
observed disk (where the Gaussian is above :data:`CUTOFF` of its peak), and reads, through the library's
inverted index (:attr:`~.library.Library.by_pixel`), only the library disks that land on them. The ranking is
the torch path's (the same correlation to ~4e-4 of its value, measured; tested against it); the top
``top`` are kept as the pass goes, so no (b, L) table is written.

The kernel releases the GIL: the patterns are shared between as many Python threads as torch has, as the
disk finder shares its batches (:mod:`..detection.fused`), never numba's own threading layer (which two
threads, e.g. a Dask worker's, may not enter at once).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["available", "CUTOFF", "top_correlations"]

try:  # a dependency; were it missing, the torch path runs instead
    import numba

    available = True
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None
    available = False

#: Raster values below this fraction of a disk's peak are not written (the Gaussian's tail beyond ~2.6 kernels).
CUTOFF = 1e-3
#: Patterns per kernel call: each thread takes its share in calls of this many.
_GROUP = 64


def _kernel(qx, qy, wa, aa, lo, hi, side, step, radius, inv4k2, ptr, orientation, weight, bb, top,
            raster, touched, row, out_index, out_value):
    """Patterns ``lo`` to ``hi``: each pattern's raster near its disks, the library's correlation with it, the
    ``top`` best (descending; ties to the lower index) into ``out_index`` / ``out_value`` rows ``i - lo``.
    ``raster`` (side ** 2,) and ``row`` (L,) are zero on entry and left so; ``touched`` (side ** 2,) is scratch."""
    N = qx.shape[1]
    L = row.shape[0]
    half = (side - 1) / 2.0
    ey = np.empty(2 * radius + 2, np.float32)
    for i in range(lo, hi):
        nt = 0
        for n in range(N):
            w = wa[i, n]
            if w <= 0:
                continue
            cx = qx[i, n] / step + half
            cy = qy[i, n] / step + half
            x0, x1 = max(0, int(math.ceil(cx - radius))), min(side - 1, int(math.floor(cx + radius)))
            y0, y1 = max(0, int(math.ceil(cy - radius))), min(side - 1, int(math.floor(cy + radius)))
            if x0 > x1 or y0 > y1:
                continue
            for py in range(y0, y1 + 1):
                dy = np.float32((py - half) * step) - qy[i, n]
                ey[py - y0] = math.exp(-dy * dy * inv4k2)
            for px in range(x0, x1 + 1):
                dx = np.float32((px - half) * step) - qx[i, n]
                gx = w * math.exp(-dx * dx * inv4k2)
                base = px * side
                for py in range(y0, y1 + 1):
                    p = base + py
                    if raster[p] == 0.0:
                        touched[nt] = p
                        nt += 1
                    raster[p] += gx * ey[py - y0]
        for t in range(nt):  # each touched pixel's value to the library disks on it
            p = touched[t]
            v = raster[p]
            raster[p] = 0.0
            for j in range(ptr[p], ptr[p + 1]):
                row[orientation[j]] += v * weight[j]
        k = i - lo
        filled = 0
        for t in range(top):
            out_index[k, t], out_value[k, t] = t, -np.inf
        for l in range(L):  # keep the best `top`, sorted, as the row goes by
            c = row[l] / math.sqrt(max(aa[i] * bb[l], 1e-30))
            row[l] = 0.0
            if filled == top and c <= out_value[k, top - 1]:
                continue
            s = min(filled, top - 1)
            while s > 0 and out_value[k, s - 1] < c:
                out_value[k, s], out_index[k, s] = out_value[k, s - 1], out_index[k, s - 1]
                s -= 1
            out_value[k, s], out_index[k, s] = c, l
            filled = min(filled + 1, top)


if available:
    _kernel = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})(_kernel)


def top_correlations(observed: torch.Tensor, wa: torch.Tensor, library, kernel: float, top: int):
    """``(index (b, top) int64, correlation (b, top) float32)``: the ``top`` library orientations that correlate
    best with each of b patterns, best first.

    ``observed`` (b, N, >= 2) ``(qx, qy, ...)`` (1/A), ``wa`` (b, N) the disks' weights (``I ** power``, 0 for
    padding), on the CPU; ``library`` a :class:`~.library.Library`, ``kernel`` the score's (1/A).
    """
    b = len(observed)
    L = len(library.orientations)
    top = min(int(top), L)
    qx = np.ascontiguousarray(observed[..., 0].float().numpy())
    qy = np.ascontiguousarray(observed[..., 1].float().numpy())
    w = np.ascontiguousarray(wa.float().numpy())
    aa = (w.astype(np.float64) ** 2).sum(-1).astype(np.float32)  # the observed disks are far apart too
    ptr, orientation, weight = (t.numpy() for t in library.by_pixel)
    bb = library.bb.float().numpy()
    radius = int(math.ceil(2 * kernel * math.sqrt(math.log(1 / CUTOFF)) / library.step))
    out_index, out_value = np.zeros((b, top), np.int64), np.zeros((b, top), np.float32)

    def share(lo: int, hi: int) -> None:
        raster, touched = np.zeros(library.side**2, np.float32), np.empty(library.side**2, np.int64)
        row = np.zeros(L, np.float32)
        for s in range(lo, hi, _GROUP):
            e = min(s + _GROUP, hi)
            _kernel(qx, qy, w, aa, s, e, library.side, np.float32(library.step), radius,
                    np.float32(1 / (4 * kernel**2)), ptr, orientation, weight, bb, top, raster, touched, row,
                    out_index[s:e], out_value[s:e])

    threads = max(1, min(torch.get_num_threads(), -(-b // _GROUP)))
    if threads == 1:
        share(0, b)
    else:
        bounds = np.linspace(0, b, threads + 1).round().astype(int).tolist()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(share, bounds[:-1], bounds[1:]))
    return torch.from_numpy(out_index), torch.from_numpy(out_value)
