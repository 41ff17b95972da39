"""Sub-pixel positions of correlation maxima: py4DSTEM's ``poly`` and ``multicorr``, for a batch.

``poly``: a parabola through each maximum and its two neighbours along x and along y of the smoothed
correlation, and the intensity bilinearly interpolated there (``get_maxima_2D``).

``multicorr``: py4DSTEM upsamples the unsmoothed correlation by a matrix DFT on a grid of
``1 / upsample_factor`` pixels over 1.5 pixels around the ``poly`` position rounded to half a pixel,
takes the grid's maximum and a parabola through its neighbours (``upsampled_correlation``). The DFT is
the band-limited (trigonometric) interpolation of the correlation; here it is summed in real space
over a window of ``2 * window`` pixels around the peak with the same Dirichlet kernel, which costs
``window**2`` instead of ``Qx * Qy`` per peak (the far pixels' terms alternate in sign and cancel on a
correlation as smooth as a disk's). ``tests/test_detection.py`` holds the result to py4DSTEM's own.
"""

from __future__ import annotations

import math

import torch

from .maxima import Maxima

__all__ = ["refine_poly", "refine_multicorr", "dirichlet", "upsampled_grid", "chebyshev_basis", "kernel_tables"]


def refine_poly(maxima: Maxima, ar: torch.Tensor):
    """(x, y, intensity) float64 (M,) each: parabolic sub-pixel positions on ``ar`` (B, X, Y), smoothed."""
    b, x, y = maxima.pattern, maxima.x, maxima.y
    c = ar[b, x, y].double()
    xm, xp, ym, yp = (ar[b, i, j].double() for i, j in ((x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)))
    fx, fy = x.double() + _vertex(xm, c, xp), y.double() + _vertex(ym, c, yp)
    return fx, fy, _bilinear(ar, b, fx, fy)


def _vertex(minus, centre, plus):
    """Offset of the vertex of the parabola through (-1, minus), (0, centre), (1, plus): py4DSTEM's formula."""
    return (plus - minus) / (4 * centre - 2 * plus - 2 * minus)


def _bilinear(a, b, fx, fy):
    """py4DSTEM's ``linear_interpolation_2D`` (floor / ceil neighbours) at float positions."""
    x0, x1 = torch.floor(fx).long(), torch.ceil(fx).long()
    y0, y1 = torch.floor(fy).long(), torch.ceil(fy).long()
    dx, dy = fx - x0, fy - y0
    nx, ny = a.shape[-2:]
    x0, x1, y0, y1 = x0.clamp(0, nx - 1), x1.clamp(0, nx - 1), y0.clamp(0, ny - 1), y1.clamp(0, ny - 1)
    return (
        (1 - dx) * (1 - dy) * a[b, x0, y0].double()
        + (1 - dx) * dy * a[b, x0, y1].double()
        + dx * (1 - dy) * a[b, x1, y0].double()
        + dx * dy * a[b, x1, y1].double()
    )


def dirichlet(t: torch.Tensor, n: int) -> torch.Tensor:
    """Real part of ``(1/n) sum_{f=-n/2}^{n/2-1} exp(2 pi i f t / n)``: the interpolation kernel of an
    ``n``-periodic band-limited signal, with numpy's frequency order (the Nyquist term as -n/2)."""
    t = t.double()
    s = torch.sin(math.pi * t / n)
    near = s.abs() < 1e-12  # t a multiple of n; in a window narrower than n, only t = 0
    safe = torch.where(near, torch.ones_like(s), s)
    if n % 2 == 0:
        # |f| <= n/2 - 1 sums to sin((n - 1) pi t / n) / sin(pi t / n) (n - 1 at t = 0); the Nyquist term adds cos(pi t)
        core = torch.where(near, torch.full_like(t, n - 1.0), torch.sin((n - 1) * math.pi * t / n) / safe)
        return (core + torch.cos(math.pi * t)) / n
    return torch.where(near, torch.ones_like(t), torch.sin(math.pi * t) / (n * safe))


def refine_multicorr(
    fx: torch.Tensor,
    fy: torch.Tensor,
    pattern: torch.Tensor,
    cc: torch.Tensor,
    upsample_factor: int = 16,
    near: int = 8,
    nodes: int = 4,
):
    """Refine ``poly`` positions (fx, fy) on the unsmoothed correlation ``cc`` (B, X, Y) as py4DSTEM's multicorr.

    Returns (x, y) float64 (M,).
    """
    if len(fx) == 0:
        return fx, fy
    u = int(upsample_factor)
    n_grid, shift_grid, offsets = upsampled_grid(u, cc.device)
    sx, sy = torch.round(fx * 2) / 2, torch.round(fy * 2) / 2  # half-pixel, as py4DSTEM
    up = _upsampled(cc, pattern, sx, sy, offsets, near, nodes, u)  # (M, G, G)
    flat = up.flatten(1).argmax(1)
    gx, gy = flat // n_grid, flat % n_grid
    inside = (gx >= 1) & (gx <= n_grid - 2) & (gy >= 1) & (gy <= n_grid - 2)
    m = torch.arange(len(fx), device=cc.device)
    gxc, gyc = gx.clamp(1, n_grid - 2), gy.clamp(1, n_grid - 2)
    c = up[m, gxc, gyc]
    xm, xp, ym, yp = up[m, gxc - 1, gyc], up[m, gxc + 1, gyc], up[m, gxc, gyc - 1], up[m, gxc, gyc + 1]
    # py4DSTEM falls back to no parabola (both axes) when the grid maximum is on the grid's border
    dx = torch.where(inside, _vertex(xm, c, xp), torch.zeros_like(c))
    dy = torch.where(inside, _vertex(ym, c, yp), torch.zeros_like(c))
    return sx + (gx - shift_grid + dx) / u, sy + (gy - shift_grid + dy) / u


def upsampled_grid(u: int, device=None):
    """py4DSTEM's multicorr grid for upsampling factor ``u``: its size G = ceil(1.5 u), the index of the
    centre (``shift_grid``) and the offsets from the centre in pixels, (G,) float64."""
    n_grid = math.ceil(1.5 * u)
    shift_grid = math.floor(math.ceil(u * 1.5) / 2)
    return n_grid, shift_grid, (torch.arange(n_grid, dtype=torch.float64, device=device) - shift_grid) / u


def _axis(s: torch.Tensor, offsets: torch.Tensor, n: int, near: int, nodes: int, upsample: int):
    """The interpolation kernel along one axis, ``K(s + offset_g - i)`` for every pixel i, factored.

    Pixels within ``near`` of ``s`` keep their kernel values; for the far ones the kernel is
    ``(-1)**i sin(pi (s + d)) g(pi (s + d - i) / n) / n`` (g = cot for even n, 1/sin for odd n), and g,
    smooth in the offset d there, is interpolated from ``nodes`` Chebyshev nodes in d. So
    ``K[g, i] = near_k[g, j] (i = index[j]) + sum_k coef[g, k] far_w[k, i]`` to ~1e-7.

    Returns index (M, 2 near), near_k (M, G, 2 near), coef (M, G, nodes) float64, far_w (M, nodes, n) float32
    on the table path (float64 otherwise; :func:`_upsampled` multiplies it in the correlation's precision).
    """
    m, dev = len(s), s.device
    wn = min(near, n // 2)
    d_nodes, basis = chebyshev_basis(offsets, nodes)
    coef = torch.sin(math.pi * (s[:, None] + offsets[None, :]))[:, :, None] * basis[None] / n  # (M, G, nodes)
    floor_s = torch.floor(s).long()
    index = floor_s[:, None] + torch.arange(-wn + 1, wn + 1, device=dev)  # (M, 2 wn)
    two_s = torch.round(2 * s).long()
    steps = torch.round(offsets * (2 * upsample)).long()  # offsets in units of 1 / (2 u): integers
    if n % 2 == 0 and bool((torch.abs(offsets * 2 * upsample - steps) < 1e-9).all()):
        # s is a multiple of 1/2 and the offsets of 1/u: every argument of the kernel lies on a grid of
        # 1/(2u), so the kernels come from small tables computed once (values identical to the formulas)
        table, span, table_far = kernel_tables(n, wn, upsample, d_nodes)
        t = upsample * two_s[:, None, None] + steps[None, :, None] - 2 * upsample * index[:, None, :]  # (M, G, 2 wn)
        near_k = table[t + span]
        jj = (two_s[:, None] - 2 * torch.arange(n, device=dev)[None, :]) % (2 * n)  # (M, n)
        # (M, nodes, n), in float32 (the precision of the correlation it multiplies): one gather of the flat table
        flat_index = jj[:, None, :] + (2 * n) * torch.arange(nodes, device=dev)[None, :, None]
        far_w = table_far.float().flatten()[flat_index]
        coef = coef * (1 - 2 * (floor_s % 2)).double()[:, None, None]
        return index % n, near_k, coef, far_w
    near_k = dirichlet(s[:, None, None] + offsets[None, :, None] - index[:, None, :], n)  # (M, G, 2 wn)
    index = index % n
    # g(pi (s + d_k - i) / n) from sin / cos of the two parts (A = pi (s + d_k) / n, B = pi i / n): no (M, nodes, n) trig
    big_a = math.pi * (s[:, None] + d_nodes[None, :]) / n  # (M, nodes)
    big_b = math.pi * torch.arange(n, dtype=torch.float64, device=dev) / n  # (n,)
    sa, ca, sb, cb = torch.sin(big_a)[..., None], torch.cos(big_a)[..., None], torch.sin(big_b), torch.cos(big_b)
    sin_ab = sa * cb - ca * sb
    sign = (1 - 2 * (torch.arange(n, device=dev) % 2)).double()
    g = (ca * cb + sa * sb) / sin_ab if n % 2 == 0 else 1 / sin_ab
    far = torch.ones(m, n, dtype=torch.bool, device=dev)
    far[torch.arange(m, device=dev)[:, None], index] = False
    far_w = torch.where(far[:, None, :], g * sign, torch.zeros_like(g))
    return index, near_k, coef, far_w


def chebyshev_basis(offsets: torch.Tensor, nodes: int):
    """``nodes`` Chebyshev nodes over the range of ``offsets`` (G,) float64 and the Lagrange basis of
    those nodes at every offset: (nodes,), (G, nodes)."""
    lo, hi = float(offsets.min()), float(offsets.max())
    k = torch.arange(nodes, dtype=torch.float64, device=offsets.device)
    d_nodes = (lo + hi) / 2 + (hi - lo) / 2 * torch.cos(math.pi * (k + 0.5) / nodes)
    diff = offsets[:, None] - d_nodes[None, :]
    basis = torch.ones(len(offsets), nodes, dtype=torch.float64, device=offsets.device)
    for j in range(nodes):
        for i in range(nodes):
            if i != j:
                basis[:, j] *= diff[:, i] / (d_nodes[j] - d_nodes[i])
    return d_nodes, basis


def kernel_tables(n: int, wn: int, upsample: int, d_nodes: torch.Tensor):
    """The kernels of an even ``n`` on the grid of 1 / (2 upsample) pixels, computed once.

    Returns ``table`` (the Dirichlet kernel at ``(j - span) / (2 upsample)``, j = 0 ... 2 span), ``span``,
    and ``table_far`` (nodes, 2n) float64: ``(-1)**(floor(s) - i) g(pi (s - i + d_k) / n)`` at
    ``(s - i) mod n = j / 2``, zero inside the near window (``floor(s) - i`` in ``[-wn + 1, wn]``).
    """
    dev = d_nodes.device
    span = 2 * upsample * (wn + 1)
    grid = torch.arange(-span, span + 1, dtype=torch.float64, device=dev) / (2 * upsample)
    table = dirichlet(grid, n)
    # far: (-1)**i g(pi (s - i + d_k) / n) = (-1)**floor(s) * T_k[2 (s - i) mod 2n], the near window zeroed in T
    j = torch.arange(2 * n, device=dev)
    delta = j.double() / 2  # (s - i) mod n
    a = math.pi * (delta[None, :] + d_nodes[:, None]) / n  # (nodes, 2n)
    whole = torch.div(j, 2, rounding_mode="floor")
    signed = torch.where(whole < n // 2, whole, whole - n)  # floor(s) - i, wrapped to (-n/2, n/2]
    far_j = (signed < -wn) | (signed > wn - 1)
    sign_j = (1 - 2 * (whole % 2)).double()
    table_far = torch.where(far_j, sign_j * torch.cos(a) / torch.sin(a), torch.zeros_like(a))
    return table, span, table_far


def _upsampled(cc, pattern, sx, sy, offsets, near, nodes, upsample):
    """(M, G, G): the band-limited interpolation of ``cc`` at ``(sx + offsets, sy + offsets)`` of each peak.

    With the factored kernels of :func:`_axis` (A = [near_k | coef], rows near pixels and far moments),
    value = A_x @ [[c_nn, c_nf], [c_fn, c_ff]] @ A_y^T. Only the far moments q = w_x @ cc touch the whole
    image (``nodes * X * Y`` multiply-adds per peak); the rest needs the peak's own ``2 near`` rows and q:
    c_nn, c_nf = rows at the near columns, rows @ w_y^T; c_fn, c_ff = q at the near columns, q @ w_y^T.
    """
    nx, ny = cc.shape[-2:]
    ix, kx, cx, wx = _axis(sx, offsets, nx, near, nodes, upsample)
    iy, ky, cy, wy = _axis(sy, offsets, ny, near, nodes, upsample)
    m, dev = len(sx), cc.device
    wx, wy = wx.to(cc.dtype), wy.to(cc.dtype)
    rows = cc[pattern[:, None], ix]  # (M, 2wx, Y): the peak's near rows
    # far moments q = w_x @ cc (M, nodes, Y), the peaks of a pattern stacked into one batched product
    # (padded to the most peaks of any pattern: one call, as a GPU wants; the CPU takes .fused_multicorr)
    order = torch.argsort(pattern, stable=True)
    counts = torch.bincount(pattern, minlength=cc.shape[0])
    slot = torch.empty_like(pattern)
    slot[order] = torch.arange(m, device=dev) - (torch.cumsum(counts, 0) - counts)[pattern[order]]
    used = torch.unique(pattern)
    row = torch.full((cc.shape[0],), -1, dtype=torch.long, device=dev)
    row[used] = torch.arange(len(used), device=dev)
    w_all = torch.zeros(len(used), int(counts.max()), nodes, nx, dtype=cc.dtype, device=dev)
    w_all[row[pattern], slot] = wx
    q_all = w_all.flatten(1, 2) @ (cc if len(used) == cc.shape[0] else cc[used])  # (U, width * nodes, Y)
    q = q_all.view(len(used), -1, nodes, ny)[row[pattern], slot]  # (M, nodes, Y)
    near_y = iy[:, None, :]
    middle = torch.cat([  # (M, 2wx + nodes, 2wy + nodes); (w_y @ rows^T)^T: the faster layout of the same product
        torch.cat([torch.gather(rows, 2, near_y.expand(-1, rows.shape[1], -1)), (wy @ rows.transpose(1, 2)).transpose(1, 2)], 2),
        torch.cat([torch.gather(q, 2, near_y.expand(-1, nodes, -1)), q @ wy.transpose(1, 2)], 2),
    ], 1).double()
    a_x, a_y = torch.cat([kx, cx], 2), torch.cat([ky, cy], 2)  # (M, G, 2w + nodes)
    return a_x @ middle @ a_y.transpose(1, 2)
