"""The finder's steps after the correlation, fused into one compiled pass per pattern (CPU).

    cc (B, Qx, Qy) --clip at 0, smooth(sigma_cc)--> ar --local maxima, ranked--> filters --> poly

are :mod:`.correlate`'s ``smooth``, :mod:`.maxima` and :mod:`.subpixel`'s ``refine_poly``, the same
rules in the same order, done here for one pattern at a time with numba while its arrays stay in the
core's cache. The torch steps make a few passes over a batch's memory each; on a CPU they are bound
by memory traffic, and this pass is about three times faster (docs/benchmarks.md, "Disk detection").
The torch steps remain the path on other devices and the reference this one is tested against.

The kernel releases the GIL: :func:`.detect.detect_batch` shares a batch's patterns between Python
threads, each correlating its share (torch, one thread) and running this pass on it. Not numba's own
threading layer, which may not be entered from two threads at once (a Dask worker's threads).
"""

from __future__ import annotations

import math
import numpy as np

__all__ = ["available", "fits", "peaks_fused"]

try:  # a dependency; were it missing, the torch steps run instead
    import numba

    available = True
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None
    available = False

#: Output modes of the kernel.
_PIXEL, _POLY = 0, 1


def _kernel(cc, start, stop, w, edge, min_abs, min_rel, rel_peak, spacing2, max_peaks, mode, counts, px, py, pv):
    """Patterns ``start ... stop - 1`` of ``cc`` (B, X, Y) float32: their peaks into ``px, py, pv``
    (B, cap) float64 (x, y in pixels, intensity), their number into ``counts`` (B,) int64. The smoothed,
    clipped correlation of one pattern at a time lives in a scratch array ``a`` (X, Y).

    ``w`` is the 1-D Gaussian (odd length, sum 1; ``[1.]`` for no smoothing), ``edge`` >= 1,
    ``spacing2`` the squared minimum spacing (0: none), ``max_peaks`` < 0 for no limit, ``rel_peak``
    the rank of the reference of the relative cut (``min_rel`` 0: none).
    """
    _, nx, ny = cc.shape
    r = (len(w) - 1) // 2
    k_len = 2 * r + 1
    row = np.empty(ny + 2 * r, np.float32)
    acc = np.empty(ny, np.float32)
    tmp = np.empty((nx, ny), np.float32)
    a = np.empty((nx, ny), np.float32)
    flag = np.zeros(ny, np.bool_)
    cap_candidates = ((nx + 1) // 2) * ((ny + 1) // 2)  # no two maxima touch (py4DSTEM's rule)
    ci = np.empty(cap_candidates, np.int64)
    cj = np.empty(cap_candidates, np.int64)
    cv = np.empty(cap_candidates, np.float32)
    kx = np.empty(cap_candidates, np.int64)  # the kept maxima of the pattern
    ky = np.empty(cap_candidates, np.int64)
    for b in range(start, stop):
        # 1. clip at 0, smooth along y (scipy's "reflect" border: the edge pixel repeated), then along x
        for x in range(nx):
            in_row = cc[b, x]
            for y in range(ny):
                v = in_row[y]
                row[r + y] = v if v > 0 else np.float32(0)
            for k in range(r):
                row[r - 1 - k] = row[r + k]
                row[r + ny + k] = row[r + ny - 1 - k]
            # the Gaussian is symmetric: w[k] (row[y + k] + row[y + 2r - k]). Offsets go into views, not
            # indices: numba wraps negative indices, and an index it cannot prove >= 0 stops vectorisation
            centre = row[r:]
            for y in range(ny):
                acc[y] = w[r] * centre[y]
            for k in range(r):
                a_lo, a_hi, wk = row[k:], row[2 * r - k :], w[k]
                for y in range(ny):
                    acc[y] += wk * (a_lo[y] + a_hi[y])
            out_row = tmp[x]
            for y in range(ny):
                out_row[y] = acc[y]
        for x in range(nx):
            centre = tmp[x]
            for y in range(ny):
                acc[y] = w[r] * centre[y]
            for k in range(r):
                lo, hi = x - r + k, x + r - k  # rows at distance r - k above and below, reflected at the edges
                if lo < 0:
                    lo = -1 - lo
                if hi >= nx:
                    hi = 2 * nx - 1 - hi
                a_lo, a_hi, wk = tmp[lo], tmp[hi], w[k]
                for y in range(ny):
                    acc[y] += wk * (a_lo[y] + a_hi[y])
            out_row = a[x]
            for y in range(ny):
                out_row[y] = acc[y]
        # 2. local maxima: >= the neighbours at +1 x, +1 y, (+1, +1), (-1, +1); > the other four
        n = 0
        for i in range(edge, nx - edge):
            up, mid, down = a[i - 1], a[i], a[i + 1]
            # branch-free and from a constant start (a provably non-negative j - 1), so that it vectorises
            for j in range(1, ny - 1):
                c = mid[j]
                flag[j] = (
                    (c >= down[j])
                    & (c > up[j])
                    & (c >= mid[j + 1])
                    & (c > mid[j - 1])
                    & (c >= down[j + 1])
                    & (c > down[j - 1])
                    & (c >= up[j + 1])
                    & (c > up[j - 1])
                    & (c >= min_abs)
                )
            for j in range(edge, ny - edge):
                if flag[j]:
                    ci[n], cj[n], cv[n] = i, j, mid[j]
                    n += 1
        # 3. brightest first (stable: ties keep the row-major order), then py4DSTEM's filters in its order
        order = np.argsort(-cv[:n], kind="mergesort")
        keep = np.ones(n, np.bool_)
        if min_rel > 0 and n > rel_peak:
            ref = cv[order[rel_peak]]
            for m in range(n):
                if cv[order[m]] / ref < min_rel:
                    keep[m] = False
        limit = n if max_peaks < 0 else max_peaks
        out = 0
        for m in range(n):
            if out >= limit:
                break
            if not keep[m]:
                continue
            i, j = ci[order[m]], cj[order[m]]
            # py4DSTEM's greedy rule, brightest first: dropped if a brighter kept maximum is too close
            near = False
            for q in range(out if spacing2 > 0 else 0):
                di, dj = kx[q] - i, ky[q] - j
                if di * di + dj * dj < spacing2:
                    near = True
                    break
            if near:
                continue
            kx[out], ky[out] = i, j
            c = np.float64(a[i, j])
            if mode == _PIXEL:
                px[b, out], py[b, out], pv[b, out] = i, j, c
            else:  # 4. poly: parabolas along x and y, intensity bilinear at the vertex
                xm, xp = np.float64(a[i - 1, j]), np.float64(a[i + 1, j])
                ym, yp = np.float64(a[i, j - 1]), np.float64(a[i, j + 1])
                fx = i + (xp - xm) / (4 * c - 2 * xp - 2 * xm)
                fy = j + (yp - ym) / (4 * c - 2 * yp - 2 * ym)
                px[b, out], py[b, out], pv[b, out] = fx, fy, _bilinear(a, fx, fy)
            out += 1
        counts[b] = out


def _bilinear(a, fx, fy):
    """py4DSTEM's ``linear_interpolation_2D`` (floor / ceil neighbours, clamped) at (fx, fy)."""
    nx, ny = a.shape
    x0, x1, y0, y1 = math.floor(fx), math.ceil(fx), math.floor(fy), math.ceil(fy)
    dx, dy = fx - x0, fy - y0
    x0, x1 = min(max(x0, 0), nx - 1), min(max(x1, 0), nx - 1)
    y0, y1 = min(max(y0, 0), ny - 1), min(max(y1, 0), ny - 1)
    return (
        (1 - dx) * (1 - dy) * np.float64(a[x0, y0])
        + (1 - dx) * dy * np.float64(a[x0, y1])
        + dx * (1 - dy) * np.float64(a[x1, y0])
        + dx * dy * np.float64(a[x1, y1])
    )


if available:
    _jit = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
    _bilinear = _jit(_bilinear)
    _kernel = _jit(_kernel)


def fits(shape, weights) -> bool:
    """Whether the kernel takes images of ``shape`` (X, Y) with this Gaussian: its radius at most the
    image's size (wider kernels reflect more than once; the torch steps handle them)."""
    return available and (len(weights) - 1) // 2 <= min(shape)


def peaks_fused(cc: np.ndarray, weights: np.ndarray, config):
    """The peaks of every pattern of ``cc`` (B, X, Y) float32 (C-contiguous), the correlation.

    ``weights``: the Gaussian of ``config.sigma_cc`` (:func:`.correlate.gaussian_kernel`), or ``[1.]``.
    ``config.subpixel`` "pixel" / "none" gives pixel positions, "poly" and "multicorr" the parabola's
    (multicorr refines them further, on ``cc``, in :mod:`.subpixel`).

    Returns ``counts`` (B,) int64 and ``x``, ``y``, ``intensity`` (P,) float64, flat in pattern order.
    """
    b, nx, ny = cc.shape
    w = np.ascontiguousarray(weights, dtype=np.float32)
    edge = max(1, int(config.edgeBoundary))
    max_peaks = -1 if config.maxNumPeaks is None else int(config.maxNumPeaks)
    cap = max(1, ((nx + 1) // 2) * ((ny + 1) // 2) if max_peaks < 0 else max_peaks)
    mode = _PIXEL if config.subpixel in ("pixel", "none") else _POLY
    counts = np.zeros(b, np.int64)
    px, py, pv = (np.zeros((b, cap)) for _ in range(3))
    # py4DSTEM drops intensities below minAbsoluteIntensity only when it is > 0
    min_abs = np.float32(config.minAbsoluteIntensity) if config.minAbsoluteIntensity > 0 else np.float32(-np.inf)
    args = (w, edge, min_abs, np.float32(config.minRelativeIntensity),
            int(config.relativeToPeak), float(config.minPeakSpacing) ** 2 if config.minPeakSpacing > 0 else 0.0,
            max_peaks, mode, counts, px, py, pv)
    if b == 0:
        return counts, np.zeros(0), np.zeros(0), np.zeros(0)
    _kernel(np.ascontiguousarray(cc, dtype=np.float32), 0, b, *args)
    valid = np.arange(cap)[None, :] < counts[:, None]
    return counts, px[valid], py[valid], pv[valid]

