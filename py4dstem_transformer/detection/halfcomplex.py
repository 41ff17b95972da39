"""The correlation's inverse FFT on a CPU: a real (X, Y) image from its half spectrum by a complex FFT of
half the size (Y even).

torch's CPU ``irfft2`` of a 256 x 256 pattern costs two to four times its ``rfft2`` (measured on this
project's 2-core machine, MKL: 0.10-0.18 ms against 0.045-0.075 ms, one thread), while a complex
``ifft2`` of (X, Y / 2) costs about as much as the ``rfft2``. The classic identity: with ``C`` the half
spectrum (X, Y/2 + 1) of a real image ``c`` and ``M = Y / 2``, the complex image ``z[x, m] = c[x, 2m] +
i c[x, 2m + 1]`` has the spectrum

    Z[a, k] = (C[a, k] + conj(C[-a, M - k])) / 2 + i W^-k (C[a, k] - conj(C[-a, M - k])) / 2,
    W = exp(-2 pi i / Y),  k = 0 ... M - 1,

so ``c`` is ``view_as_real(ifft2(Z))`` read as (X, Y), no copy. ``_packed_spectrum`` forms ``Z``
from ``C`` (times the template's spectrum, fused) in one compiled pass per pattern while both stay in the
core's cache (~30 us at 256 x 256). The floats differ from ``irfft2``'s in the last bits only (both
within ~4e-7 of the largest value from a float64 transform; tested to 2e-6).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from . import fused as _fused

__all__ = ["fits", "inverse_rfft2"]


def fits(spectrum: torch.Tensor, shape) -> bool:
    """Whether :func:`inverse_rfft2` takes this spectrum: on the CPU, complex64, numba present, Y even."""
    return (_fused.available and spectrum.device.type == "cpu" and spectrum.dtype == torch.complex64
            and len(shape) == 2 and shape[1] % 2 == 0 and shape[1] >= 2 and spectrum.shape[-1] == shape[1] // 2 + 1
            and spectrum.shape[-2] == shape[0])


def _packed_spectrum(spectrum, template, w, c, reversed_, out):
    """``out`` (X, M) complex64: ``Z`` of the module docstring for ``C = spectrum * template`` ((X, M + 1)
    complex64 each; ``template`` of shape (1, 1) for none). ``w`` (M,) ``0.5j conj(W^k)``; scratch ``c``
    (X, M + 1) complex64 and ``reversed_`` (X, M + 1) int64."""
    nx, m = out.shape
    if template.shape[0] == 1:
        for a in range(nx):
            sa, ca = spectrum[a], c[a]
            for k in range(m + 1):
                ca[k] = sa[k]
    else:
        for a in range(nx):
            sa, ta, ca = spectrum[a], template[a], c[a]
            for k in range(m + 1):
                ca[k] = sa[k] * ta[k]
    # reversed_[a, k] = C[-a, M - k], moved as int64 (a complex64 is 8 bytes), which vectorises
    ci = c.view(np.int64)
    for a in range(nx):
        src, dst = ci[0 if a == 0 else nx - a], reversed_[a]
        for k in range(m + 1):
            dst[k] = src[m - k]
    rc = reversed_.view(np.complex64)
    for a in range(nx):
        ca, ra, o = c[a], rc[a], out[a]
        for k in range(m):
            p, q = ca[k], ra[k].conjugate()
            o[k] = (p + q) * np.float32(0.5) + (p - q) * w[k]


def _packed_spectra(spectra, template, w, c, reversed_, out):
    """:func:`_packed_spectrum` of every pattern of ``spectra`` (B, X, M + 1) into ``out`` (B, X, M): one call."""
    for i in range(spectra.shape[0]):
        _packed_spectrum(spectra[i], template, w, c, reversed_, out[i])


if _fused.available:
    _jit = _fused.numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
    _packed_spectrum = _jit(_packed_spectrum)
    _packed_spectra = _jit(_packed_spectra)


@functools.lru_cache(maxsize=8)
def _twiddles(y: int) -> np.ndarray:
    m = y // 2
    return (0.5j * np.exp(2j * np.pi * np.arange(m) / y)).astype(np.complex64)


def inverse_rfft2(spectrum: torch.Tensor, shape, template: torch.Tensor = None) -> torch.Tensor:
    """``irfft2(spectrum * template, s=shape)`` of (B, X, Y/2 + 1) complex64 (CPU): (B, X, Y) float32.

    ``template``: (X, Y/2 + 1) complex64 multiplied in on the way, or None. Each pattern is transformed the
    same whatever the batch it comes in (a lone one beside a copy of itself: torch's CPU transforms take
    another path for a batch of one).
    """
    b = spectrum.shape[0]
    nx, ny = int(shape[0]), int(shape[1])
    m = ny // 2
    w = _twiddles(ny)
    t = np.ones((1, 1), np.complex64) if template is None else np.ascontiguousarray(template.numpy())
    s = spectrum.contiguous().numpy()
    c = np.empty((nx, m + 1), np.complex64)
    reversed_ = np.empty((nx, m + 1), np.int64)
    z = torch.empty(2 if b == 1 else b, nx, m, dtype=torch.complex64)
    zn = z.numpy()
    _packed_spectra(s, t, w, c, reversed_, zn)
    if b == 1:
        zn[1] = zn[0]
    out = torch.view_as_real(torch.fft.ifft2(z)).reshape(z.shape[0], nx, ny)
    return out[:b]
