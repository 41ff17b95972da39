"""py4DSTEM's ``multicorr`` refinement as one compiled pass per peak (CPU).

The same interpolation as :func:`.subpixel.refine_multicorr` (read its docstring first): each peak's
grid of ``ceil(1.5 u)``² points, ``1 / u`` pixel apart around its ``poly`` position rounded to half a
pixel, is ``A_x @ middle @ A_y^T`` with the factored kernels of :func:`.subpixel._axis`
(``A = [near kernel | Chebyshev coefficients]``, ``(G, 2 near + nodes)``). Here:

    far weights w_x (M, nodes, X) float32    from the table of :func:`.subpixel.kernel_tables` (in the
                                             batched product: (B, slots, nodes, X), each peak in its slot)
    q = w_x @ cc[pattern] (M, nodes, Y)      torch: one batched product over the sub-batch (each pattern's
                                             peaks in its slots, zero-padded), or one per pattern where
                                             few patterns hold the peaks
    per peak, compiled: A_x, A_y from the tables; middle from cc's near rows and q;
        the grid, its maximum and the parabola through its neighbours

instead of a dozen torch operations over every peak's arrays, which cost ~3.5x as much per peak on one
thread (docs/benchmarks.md, "Disk detection"). The torch path stays the reference (and the path on other
devices and for odd detector sizes); ``tests/test_detection.py`` holds this pass to it and to py4DSTEM.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from . import fused as _fused
from .subpixel import chebyshev_basis, kernel_tables, upsampled_grid

__all__ = ["fits", "refine_multicorr_fused"]


def fits(shape) -> bool:
    """Whether this pass takes a correlation of ``shape`` (X, Y): numba present and both sizes even
    (the tables need an even size; odd sizes take :func:`.subpixel.refine_multicorr`)."""
    return _fused.available and shape[0] % 2 == 0 and shape[1] % 2 == 0


def _reversed(table_far: np.ndarray) -> np.ndarray:
    """(nodes, 4n) float32 ``r[k, j] = table_far[k, -j mod 2n]``, so that the far weight at pixel i of a peak at
    ``s = two_s / 2`` is ``r[k, start + 2 i]`` with ``start = -two_s mod 2n``: a strided copy per peak."""
    n2 = table_far.shape[1]
    return np.ascontiguousarray(table_far[:, (-np.arange(2 * n2)) % n2], dtype=np.float32)


def _far_weights(two_s, reversed_far, n, pattern, rank, out):
    """out[pattern[p], rank[p], k, i] = table_far[k, (two_s[p] - 2 i) mod 2n]: the far weights of every peak
    along one axis into its slot of ``out`` (B, slots, nodes, n), from :func:`_reversed` of the table (no
    division per element). One slot per peak: ``pattern = arange(M)``, ``rank = 0``, ``out`` (M, 1, nodes, n)."""
    nodes = reversed_far.shape[0]
    for p in range(len(two_s)):
        start = (-two_s[p]) % (2 * n)
        o = out[pattern[p], rank[p]]
        for k in range(nodes):
            src = reversed_far[k, start:]
            ok = o[k]
            for i in range(n):
                ok[i] = src[2 * i]


def _axis_matrix(two_s, n, wn, u, steps, table, span, sin_part, basis, a, index):
    """A (G, 2 wn + nodes) float64 and the near pixels ``index`` (2 wn,) of one peak along one axis."""
    g_len, nodes = basis.shape
    floor_s = two_s // 2  # floor division: floor(s) also for negative s
    sign = 1.0 - 2.0 * (floor_s % 2)
    for j in range(2 * wn):
        i = floor_s - wn + 1 + j
        index[j] = i % n
        for g in range(g_len):
            a[g, j] = table[u * two_s + steps[g] - 2 * u * i + span]
    for g in range(g_len):
        c = sin_part[g] * sign / n
        for k in range(nodes):
            a[g, 2 * wn + k] = c * basis[g, k]


def _kernel(cc, pattern, q_index, rank, two_sx, two_sy, q, wy_all, u, wnx, wny, steps, table_x, span_x, table_y, span_y,
            sin_x, sin_y, basis, shift_grid, out_x, out_y):
    """Peaks ``0 ... M - 1``: their refined (x, y) into ``out_x``, ``out_y``.

    ``cc`` (B, X, Y) float32; ``pattern`` (M,); ``two_sx``, ``two_sy`` (M,) int64, twice the rounded
    positions; ``q`` (B', slots, nodes, Y) float32 the far moments w_x @ cc, peak p's at
    ``q[q_index[p], rank[p]]``; ``wy_all`` (M, nodes, Y) float32 the
    far weights along y; ``sin_x``, ``sin_y`` (M, G): sin(pi (s + offset_g)).
    """
    m = len(pattern)
    g_len, nodes = basis.shape
    wx_, wy_ = 2 * wnx + nodes, 2 * wny + nodes
    ny = cc.shape[2]
    ax = np.empty((g_len, wx_))
    ay = np.empty((g_len, wy_))
    ix = np.empty(2 * wnx, np.int64)
    iy = np.empty(2 * wny, np.int64)
    mid = np.zeros((wx_, wy_))
    t1 = np.empty((g_len, wy_))
    up = np.empty((g_len, g_len))
    for p in range(m):
        b = pattern[p]
        _axis_matrix(two_sx[p], cc.shape[1], wnx, u, steps, table_x, span_x, sin_x[p], basis, ax, ix)
        _axis_matrix(two_sy[p], ny, wny, u, steps, table_y, span_y, sin_y[p], basis, ay, iy)
        wy = wy_all[p]
        # middle = [[near rows at near columns, near rows . w_y], [q at near columns, q . w_y]]
        for j in range(2 * wnx):
            row = cc[b, ix[j]]
            for l in range(2 * wny):
                mid[j, l] = row[iy[l]]
            for k in range(nodes):
                acc = 0.0
                wk = wy[k]
                for i in range(ny):
                    acc += np.float64(row[i]) * np.float64(wk[i])
                mid[j, 2 * wny + k] = acc
        qp = q[q_index[p], rank[p]]
        for k in range(nodes):
            row = qp[k]
            for l in range(2 * wny):
                mid[2 * wnx + k, l] = row[iy[l]]
            for k2 in range(nodes):
                acc = 0.0
                wk = wy[k2]
                for i in range(ny):
                    acc += np.float64(row[i]) * np.float64(wk[i])
                mid[2 * wnx + k, 2 * wny + k2] = acc
        # the grid: (A_x @ mid) @ A_y^T
        for g in range(g_len):
            for c in range(wy_):
                t1[g, c] = 0.0
            for a_ in range(wx_):
                v = ax[g, a_]
                for c in range(wy_):
                    t1[g, c] += v * mid[a_, c]
        best, gx, gy = -np.inf, 0, 0
        for g in range(g_len):
            for h in range(g_len):
                acc = 0.0
                for c in range(wy_):
                    acc += t1[g, c] * ay[h, c]
                up[g, h] = acc
                if acc > best:  # the first maximum in C order, as argmax
                    best, gx, gy = acc, g, h
        dx = dy = 0.0
        if 1 <= gx <= g_len - 2 and 1 <= gy <= g_len - 2:  # else no parabola (both axes), as py4DSTEM
            c0 = up[gx, gy]
            xm, xp, ym, yp = up[gx - 1, gy], up[gx + 1, gy], up[gx, gy - 1], up[gx, gy + 1]
            dx = (xp - xm) / (4 * c0 - 2 * xp - 2 * xm)
            dy = (yp - ym) / (4 * c0 - 2 * yp - 2 * ym)
        out_x[p] = two_sx[p] / 2 + (gx - shift_grid + dx) / u
        out_y[p] = two_sy[p] / 2 + (gy - shift_grid + dy) / u


if _fused.available:
    import numba

    # reassociation lets the dot products vectorise; the sums then differ from the torch path's in the last bits
    _jit = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract", "reassoc"})
    _far_weights = _jit(_far_weights)
    _axis_matrix = _jit(_axis_matrix)
    _kernel = _jit(_kernel)


#: Whether q = w_x @ cc may be one batched product over a sub-batch (False: one product per pattern, the
#: former way; for comparisons).
batched = True


@functools.lru_cache(maxsize=16)
def _tables(nx: int, ny: int, u: int, near: int, nodes: int):
    """What depends only on the sizes: the grid, the Chebyshev basis and both axes' kernel tables (numpy,
    computed once per detector shape; the torch path's own :func:`.subpixel.kernel_tables`)."""
    n_grid, shift_grid, offsets = upsampled_grid(u)
    d_nodes, basis = chebyshev_basis(offsets, nodes)
    wnx, wny = min(near, nx // 2), min(near, ny // 2)
    table_x, span_x, far_x = kernel_tables(nx, wnx, u, d_nodes)
    table_y, span_y, far_y = (table_x, span_x, far_x) if (ny, wny) == (nx, wnx) else kernel_tables(ny, wny, u, d_nodes)
    return dict(shift_grid=shift_grid, offsets=offsets.numpy(), basis=basis.numpy(), wnx=wnx, wny=wny,
                steps=2 * (np.arange(n_grid) - shift_grid),  # offsets in units of 1 / (2u)
                table_x=table_x.numpy(), span_x=span_x, far_x=_reversed(far_x.numpy()),
                table_y=table_y.numpy(), span_y=span_y, far_y=_reversed(far_y.numpy()))


def refine_multicorr_fused(fx, fy, pattern, cc: torch.Tensor, upsample_factor: int = 16, near: int = 8,
                           nodes: int = 4):
    """:func:`.subpixel.refine_multicorr` as one compiled pass per peak: same arguments, same results
    (to ~1e-6 px; a near-tie of two grid points may go the other way). ``cc`` on the CPU, X and Y even.

    Returns (x, y) float64 torch tensors (M,).
    """
    m = len(fx)
    if m == 0:
        return fx.double(), fy.double()
    u = int(upsample_factor)
    nx, ny = cc.shape[-2:]
    t = _tables(int(nx), int(ny), u, int(near), int(nodes))
    tsx = np.round(np.asarray(fx, dtype=np.float64) * 2).astype(np.int64)  # half-pixel, as py4DSTEM (half to even)
    tsy = np.round(np.asarray(fy, dtype=np.float64) * 2).astype(np.int64)
    sin_x = np.sin(math.pi * (tsx[:, None] / 2 + t["offsets"][None, :]))
    sin_y = np.sin(math.pi * (tsy[:, None] / 2 + t["offsets"][None, :]))
    p = np.asarray(pattern, dtype=np.int64)
    counts = np.bincount(p, minlength=cc.shape[0])
    c32 = cc if cc.dtype == torch.float32 else cc.float()
    one_slot, zero_rank = np.arange(m), np.zeros(m, np.int64)
    wy = np.empty((m, nodes, ny), np.float32)
    _far_weights(tsy, t["far_y"], ny, one_slot, zero_rank, wy[:, None])
    if batched and m * 2 >= int(counts.max()) * len(counts):
        # peaks spread over the patterns: q = w_x @ cc as one batched product, each pattern's peaks in its slot
        # (rank: a peak's place among its pattern's), zero rows where a pattern has fewer than the most
        order = np.argsort(p, kind="stable")
        rank = np.empty(m, np.int64)
        rank[order] = np.arange(m) - np.repeat(np.cumsum(counts) - counts, counts)
        slots = int(counts.max())
        wx = np.zeros((len(counts), slots, nodes, nx), np.float32)
        _far_weights(tsx, t["far_x"], nx, p, rank, wx)
        q = torch.bmm(torch.from_numpy(wx).view(len(counts), slots * nodes, nx), c32).numpy().reshape(len(counts), slots, nodes, ny)
        q_index = p
    else:  # few patterns hold the peaks: one product per pattern with peaks
        wx = np.empty((m, nodes, nx), np.float32)
        _far_weights(tsx, t["far_x"], nx, one_slot, zero_rank, wx[:, None])
        grouped = bool((p[1:] >= p[:-1]).all())  # as the finder gives them: no reordering needed
        order = None if grouped else np.argsort(p, kind="stable")
        w_sorted = torch.from_numpy(wx if grouped else wx[order])
        q_sorted = torch.empty(m, nodes, ny, dtype=torch.float32)
        start = 0
        for b in np.nonzero(counts)[0].tolist():
            c = int(counts[b])
            torch.mm(w_sorted[start : start + c].reshape(c * nodes, nx), c32[b], out=q_sorted[start : start + c].view(c * nodes, ny))
            start += c
        flat = q_sorted.numpy()
        if not grouped:
            flat = np.empty_like(flat)
            flat[order] = q_sorted.numpy()
        q, q_index, rank = flat[:, None], one_slot, zero_rank  # q[p, 0] is peak p's
    out_x, out_y = np.empty(m), np.empty(m)
    _kernel(np.ascontiguousarray(c32.numpy()), p, q_index, rank, tsx, tsy, q, wy, u, t["wnx"], t["wny"], t["steps"], t["table_x"],
            t["span_x"], t["table_y"], t["span_y"], sin_x, sin_y, t["basis"], t["shift_grid"], out_x, out_y)
    return torch.from_numpy(out_x), torch.from_numpy(out_y)
