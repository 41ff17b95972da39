"""Correlation of a batch of diffraction patterns with the probe template, and Gaussian smoothing.

What py4DSTEM's ``find_Bragg_disks`` does to one pattern at a time (``get_cross_correlation_FT``,
then ``scipy.ndimage.gaussian_filter``), done here to a batch at once in torch, with the same
arithmetic: the correlation is circular (FFT), the smoothing is scipy's truncated Gaussian with
``mode="reflect"`` boundaries. Shapes: ``B`` patterns of ``(Qx, Qy)`` detector pixels.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import halfcomplex as _halfcomplex

__all__ = ["template_spectrum", "correlate", "gaussian_kernel", "smooth"]

#: scipy.ndimage.gaussian_filter's default truncation, in standard deviations.
_TRUNCATE = 4.0
#: Rows per block of the banded smoothing matmul (at least twice the kernel radius).
_BLOCK = 16


def template_spectrum(template, shape, device=None) -> Optional[torch.Tensor]:
    """``conj(rfft2(template))``: (Qx, Qy // 2 + 1) complex64, or None for no template.

    ``template`` is the real-space probe kernel (``probe.kernel``), centred at pixel (0, 0) as
    py4DSTEM's kernels are, of the patterns' ``shape``.
    """
    if template is None:
        return None
    t = np.asarray(template)
    if t.ndim != 2 or tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"template has shape {t.shape} but the diffraction patterns are {tuple(shape)}: pass probe.kernel "
            "(probe.get_kernel(...)) made from this datacube, or a filter_function that returns patterns of its shape"
        )
    if not np.isfinite(t).all():
        raise ValueError("template contains NaN or inf values; build the kernel again (probe.get_kernel)")
    return torch.conj(torch.fft.rfft2(torch.as_tensor(t, dtype=torch.float64, device=device))).to(torch.complex64)


def correlate(patterns: torch.Tensor, template_ft: Optional[torch.Tensor], corr_power: float = 1.0) -> torch.Tensor:
    """Cross / hybrid / phase correlation of every pattern with the template.

    Parameters
    ----------
    patterns : (B, Qx, Qy) float32
    template_ft : (Qx, Qy // 2 + 1) complex64 from :func:`template_spectrum`, or None (no correlation:
        the patterns themselves are returned as the "correlation").
    corr_power : 1 is a cross correlation, 0 a phase correlation, between them py4DSTEM's hybrid.

    Returns
    -------
    cc : (B, Qx, Qy) float32, the real correlation, not clipped. On a CPU (Qy even) the inverse transform
        is :func:`.halfcomplex.inverse_rfft2`, elsewhere torch's ``irfft2``.
    """
    if template_ft is None:
        return patterns
    shape = patterns.shape[-2:]
    m = torch.fft.rfft2(patterns)
    fast = _halfcomplex.fits(m, shape) and template_ft.dtype == torch.complex64
    if corr_power == 1 and fast:
        return _halfcomplex.inverse_rfft2(m, shape, template_ft)  # the product formed in the same pass
    m *= template_ft
    if corr_power != 1:
        magnitude = m.abs()
        # |m|**p * exp(i angle(m)) == m * |m|**(p - 1); zero where m is zero, as numpy's angle(0) = 0 gives
        m = torch.where(magnitude > 0, m * magnitude.clamp_min(1e-30).pow(corr_power - 1), torch.zeros_like(m))
    return _halfcomplex.inverse_rfft2(m, shape) if fast else _irfft2(m, shape)


def _irfft2(m: torch.Tensor, s) -> torch.Tensor:
    """``irfft2`` that gives a pattern the same floats whatever the batch it comes in: torch's CPU transform
    of a single pattern takes another path than a batch's (measured: 4e-7 apart, enough to move a peak by
    1e-4 px with poly and 5e-3 px with multicorr), so a lone pattern is transformed beside a copy of itself."""
    if m.dim() == 3 and m.shape[0] == 1 and m.device.type == "cpu":
        return torch.fft.irfft2(torch.cat([m, m]), s=s)[:1]
    return torch.fft.irfft2(m, s=s)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian: radius ``int(4 sigma + 0.5)``, normalised to sum 1 (float64)."""
    radius = int(_TRUNCATE * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def smooth(images: torch.Tensor, sigma: float, clip: bool = False) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter(image, sigma) of every image of (B, X, Y), ``mode="reflect"``;
    with ``clip``, of ``max(image, 0)`` (py4DSTEM smooths the clipped correlation).

    Each axis is a banded matrix product done in blocks of rows, so the cost is a few multiply-adds per
    kernel tap instead of a dense (X, X) product; the reflected border is written around the image
    once per axis, in the buffer the previous step writes into.
    """
    if sigma <= 0:
        return images.clamp_min(0) if clip else images
    kernel = gaussian_kernel(sigma)
    radius = (len(kernel) - 1) // 2
    b, nx, ny = images.shape
    if radius > min(nx, ny):  # kernels wider than the image: the general (slower) path
        return _smooth_axis(_smooth_axis(images.clamp_min(0) if clip else images, kernel, -2), kernel, -1)
    block = max(_BLOCK, 2 * radius)
    band = _band(kernel, block, images.dtype, images.device)  # (block + 2 radius, block)
    rows = torch.empty(b, nx + 2 * radius, ny, dtype=images.dtype, device=images.device)
    middle = rows[:, radius : radius + nx]
    if clip:
        torch.clamp_min(images, 0, out=middle)
    else:
        middle.copy_(images)
    rows[:, :radius], rows[:, radius + nx :] = middle[:, :radius].flip(1), middle[:, nx - radius :].flip(1)
    cols = torch.empty(b, nx, ny + 2 * radius, dtype=images.dtype, device=images.device)
    band_t = band.T.contiguous()
    for start in range(0, nx, block):  # along x: (block, block + 2r) @ (block + 2r, Y) per image
        stop = min(start + block, nx)
        cols[:, start:stop, radius : radius + ny] = band_t[: stop - start, : stop - start + 2 * radius] @ rows[:, start : stop + 2 * radius]
    middle = cols[:, :, radius : radius + ny]
    cols[:, :, :radius], cols[:, :, radius + ny :] = middle[:, :, :radius].flip(2), middle[:, :, ny - radius :].flip(2)
    out = torch.empty_like(images)
    for start in range(0, ny, block):  # along y: (X, block + 2r) @ (block + 2r, block) per image
        stop = min(start + block, ny)
        out[:, :, start:stop] = cols[:, :, start : stop + 2 * radius] @ band[: stop - start + 2 * radius, : stop - start]
    return out


def _band(kernel: np.ndarray, block: int, dtype, device) -> torch.Tensor:
    """(block + 2 r, block): column j holds the (flipped) kernel at rows j ... j + 2r."""
    radius = (len(kernel) - 1) // 2
    band = np.zeros((block + 2 * radius, block))
    for j in range(block):
        band[j : j + 2 * radius + 1, j] = kernel[::-1]
    return torch.as_tensor(band, dtype=dtype, device=device)


def _smooth_axis(images: torch.Tensor, kernel: np.ndarray, dim: int) -> torch.Tensor:
    n, radius = images.shape[dim], (len(kernel) - 1) // 2
    block = max(_BLOCK, 2 * radius)
    # indices of the padded axis: scipy "reflect" (d c b a | a b c d | d c b a), repeated for kernels wider than the image
    if radius <= n:  # slices, flipped: much faster than a gather along the last axis
        left, right = images.narrow(dim, 0, radius).flip(dim), images.narrow(dim, n - radius, radius).flip(dim)
        padded = torch.cat([left, images, right], dim)
    else:
        index = torch.as_tensor(_reflect_index(np.arange(-radius, n + radius), n), device=images.device)
        padded = images.index_select(dim, index)
    band = _band(kernel, block, images.dtype, images.device)
    out = torch.empty_like(images)
    for start in range(0, n, block):  # one strided matrix product per block of output rows / columns
        stop = min(start + block, n)
        w = band[: stop - start + 2 * radius, : stop - start]
        if dim == -1:
            out[..., start:stop] = padded[..., start : stop + 2 * radius] @ w
        else:
            out[..., start:stop, :] = w.T @ padded[..., start : stop + 2 * radius, :]
    return out


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Map indices outside [0, n) back into it by scipy's "reflect" rule (the edge pixel repeated)."""
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i < n, i, period - 1 - i)
