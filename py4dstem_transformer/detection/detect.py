"""One batch of diffraction patterns in, the Bragg disks of each out: the finder's pipeline.

    patterns (B, Qx, Qy) --correlate--> cc --clip at 0, smooth(sigma_cc)--> ar
        --local_maxima, filter_maxima--> maxima --refine_poly [--refine_multicorr on cc]--> peaks

exactly the steps of py4DSTEM's ``_find_Bragg_disks_single``, for B patterns at once. On a CPU the
steps from ``cc`` to the poly positions run as one compiled pass per pattern (:mod:`.fused`), and
multicorr's refinement as one per peak (:mod:`.fused_multicorr`); the torch steps are the path
elsewhere and the reference those passes are tested against.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .config import DiskDetectionConfig
from . import fused as _fused
from . import fused_multicorr as _fused_multicorr
from .correlate import correlate, gaussian_kernel, smooth
from .maxima import Maxima, brightest_first, filter_maxima, local_maxima
from .subpixel import refine_multicorr, refine_poly

__all__ = ["BatchPeaks", "detect_batch"]

#: Pixels per sub-batch of the dense steps (correlation, smoothing, maxima): 16 patterns of 256 x 256.
_DENSE_PIXELS = 1 << 20
#: Whether ``detect_batch(..., fused=None)`` may use the compiled pass (False: the torch steps everywhere,
#: e.g. to compare the two; ``benchmarks.disks`` does).
use_fused = True
#: The same for one thread of the fused path: 8 patterns of 256 x 256 (4 and 16 were slower).
_FUSED_PIXELS = 1 << 19


@dataclass
class BatchPeaks:
    """The peaks of a batch, flat: ``counts`` (B,) int64 and (P,) float64 ``x``, ``y``, ``intensity``
    (pixels, correlation height), pattern after pattern in py4DSTEM's order within each."""

    counts: np.ndarray
    x: np.ndarray
    y: np.ndarray
    intensity: np.ndarray

    @classmethod
    def empty(cls) -> "BatchPeaks":
        z = np.zeros(0)
        return cls(np.zeros(0, dtype=np.int64), z, z, z)

    @classmethod
    def concatenate(cls, parts) -> "BatchPeaks":
        """One :class:`BatchPeaks` of consecutive batches, in order."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate(f) for f in zip(*((p.counts, p.x, p.y, p.intensity) for p in parts))))


def detect_batch(patterns: torch.Tensor, template_ft, config: DiskDetectionConfig, fused=None) -> BatchPeaks:
    """Find the disks of every pattern of ``patterns`` (B, Qx, Qy) float32.

    ``template_ft`` is :func:`~py4dstem_transformer.detection.correlate.template_spectrum` of the probe
    kernel, or None to look for maxima of the patterns themselves (py4DSTEM's ``template=None``).
    ``fused``: use the compiled pass of :mod:`.fused` after the correlation (default: on a CPU, where
    numba is installed and the smoothing kernel fits the image); False forces the torch steps.
    Raises ValueError if a pattern holds NaN or inf.
    """
    n = patterns.shape[0]
    if n == 0:
        return BatchPeaks.empty()
    weights = gaussian_kernel(config.sigma_cc) if config.sigma_cc > 0 else np.ones(1)
    if fused is None:
        fused = use_fused and patterns.device.type == "cpu" and _fused.fits(patterns.shape[-2:], weights)
    if fused:
        return _detect_fused(patterns, template_ft, config, weights)
    _check_finite(patterns)
    # the dense steps in sub-batches small enough to stay in cache; the filters on all maxima at once
    step = max(1, _DENSE_PIXELS // (patterns.shape[-1] * patterns.shape[-2]))
    parts, found = [], []
    for s in range(0, n, step):
        part = patterns[s : s + step]
        if config.sigma_dp > 0 and template_ft is not None:  # py4DSTEM smooths the pattern only when it correlates
            part = smooth(part, config.sigma_dp)
        cc = correlate(part, template_ft, config.corrPower)
        ar = smooth(cc, config.sigma_cc, clip=True)
        m = local_maxima(ar, config.edgeBoundary, config.minAbsoluteIntensity)
        m.pattern += s
        parts.append((s, cc, ar))
        found.append(m)
    maxima = found[0] if len(found) == 1 else Maxima(*(torch.cat(f) for f in zip(*((m.pattern, m.x, m.y, m.value) for m in found))))
    maxima = filter_maxima(
        maxima,
        n,
        min_relative=config.minRelativeIntensity,
        relative_to_peak=config.relativeToPeak,
        min_spacing=config.minPeakSpacing,
        max_num_peaks=config.maxNumPeaks,
    )
    # sub-pixel positions, sub-batch by sub-batch (maxima are grouped by pattern)
    bounds = torch.searchsorted(maxima.pattern, torch.tensor([s for s, _, _ in parts] + [n], device=maxima.pattern.device))
    columns = []
    for (s, cc, ar), lo, hi in zip(parts, bounds[:-1].tolist(), bounds[1:].tolist()):
        m = maxima.select(slice(lo, hi))
        in_batch = m.pattern
        m.pattern = in_batch - s
        columns.append((in_batch,) + _subpixel(m, cc, ar, config))
    pattern, x, y, intensity = (torch.cat(c) for c in zip(*columns))
    if config.subpixel == "multicorr":
        # py4DSTEM sorts multicorr's peaks by intensity again (the poly interpolation)
        order = brightest_first(pattern, intensity)
        pattern, x, y, intensity = pattern[order], x[order], y[order], intensity[order]
    counts = torch.bincount(pattern, minlength=n)
    return BatchPeaks(*(t.cpu().numpy() for t in (counts.long(), x, y, intensity)))


def _check_finite(patterns: torch.Tensor) -> None:
    if not bool(torch.isfinite(patterns.sum())):  # one reduction; NaN and inf propagate
        raise ValueError(
            "diffraction patterns contain NaN or inf; replace them (e.g. np.nan_to_num, or mask the dead pixels "
            "with a filter_function) before finding disks"
        )


def _detect_fused(patterns, template_ft, config, weights) -> BatchPeaks:
    """:func:`detect_batch` with the steps after the correlation in :func:`.fused.peaks_fused`.

    The patterns are shared between as many Python threads as torch has threads; each correlates its
    share in sub-batches that stay in its core's cache, torch limited to one thread meanwhile (both
    would otherwise compete for the cores: measured 30% slower on 2 cores).
    """
    n = patterns.shape[0]
    threads = max(1, min(torch.get_num_threads(), n))
    step = max(1, _FUSED_PIXELS // (patterns.shape[-1] * patterns.shape[-2]))
    # a NaN or inf anywhere in a pattern makes every value of its FFT, so of its cross correlation,
    # NaN or inf (each output sums every input): one pixel of the correlation tells. Not so for the
    # hybrid correlation (NaN magnitudes are zeroed) or without a template: there, the sum of the pattern.
    cheap_check = template_ft is not None and config.corrPower == 1

    multicorr = config.subpixel == "multicorr"
    # the compiled multicorr refines each sub-batch while its correlation is in cache; the torch one once per share
    # (its cost is mostly per call)
    multicorr_now = multicorr and _fused_multicorr.fits(patterns.shape[-2:])

    def share(lo, hi):
        parts, ccs = [], []
        for s in range(lo, hi, step):
            part = patterns[s : min(s + step, hi)]
            if not cheap_check:
                _check_finite(part)
            if config.sigma_dp > 0 and template_ft is not None:  # py4DSTEM smooths the pattern only when it correlates
                part = smooth(part, config.sigma_dp)
            cc = correlate(part, template_ft, config.corrPower)
            if cheap_check:
                _check_finite(cc[:, 0, 0])
            peaks = BatchPeaks(*_fused.peaks_fused(cc.numpy(), weights, config))
            if multicorr_now:
                peaks = _refine_multicorr(peaks, cc, config, _fused_multicorr.refine_multicorr_fused)
            elif multicorr:
                ccs.append(cc)
            parts.append(peaks)
        peaks = BatchPeaks.concatenate(parts)
        if ccs:
            peaks = _refine_multicorr(peaks, ccs[0] if len(ccs) == 1 else torch.cat(ccs), config, refine_multicorr)
        return peaks

    if threads == 1:
        return share(0, n)
    bounds = np.linspace(0, n, threads + 1).round().astype(int).tolist()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return BatchPeaks.concatenate(pool.map(share, bounds[:-1], bounds[1:]))
    finally:
        torch.set_num_threads(previous)


def _refine_multicorr(peaks: BatchPeaks, cc: torch.Tensor, config, refine) -> BatchPeaks:
    """``peaks`` (poly positions) of the patterns of ``cc`` refined by ``refine`` (multicorr) and put in
    brightest-first order again, as py4DSTEM sorts multicorr's peaks by intensity once more. The order in numpy
    (:func:`.maxima.brightest_first`'s, stable in ties): fewer torch calls, each of which releases and takes
    the GIL again, which the finder's other threads queue for."""
    if not len(peaks.x):
        return peaks
    pattern = np.repeat(np.arange(len(peaks.counts)), peaks.counts)
    x, y = refine(torch.from_numpy(peaks.x), torch.from_numpy(peaks.y), torch.from_numpy(pattern), cc,
                  config.upsample_factor)
    order = np.lexsort((-peaks.intensity, pattern))  # grouped by pattern, brightest first, stable in ties
    return BatchPeaks(peaks.counts, x.numpy()[order], y.numpy()[order], peaks.intensity[order])


def _subpixel(maxima: Maxima, cc: torch.Tensor, ar: torch.Tensor, config: DiskDetectionConfig):
    """(x, y, intensity) float64 of the maxima of one sub-batch (pattern indices local to ``cc`` / ``ar``)."""
    if config.subpixel in ("pixel", "none"):
        return maxima.x.double(), maxima.y.double(), maxima.value.double()
    x, y, intensity = refine_poly(maxima, ar)
    if config.subpixel == "multicorr":
        x, y = refine_multicorr(x, y, maxima.pattern, cc, config.upsample_factor)
    return x, y, intensity
