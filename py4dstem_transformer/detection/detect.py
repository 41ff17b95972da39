"""One batch of diffraction patterns in, the Bragg disks of each out: the finder's pipeline.

    patterns (B, Qx, Qy) --correlate--> cc --clip at 0, smooth(sigma_cc)--> ar
        --local_maxima, filter_maxima--> maxima --refine_poly [--refine_multicorr on cc]--> peaks

exactly the steps of py4DSTEM's ``_find_Bragg_disks_single``, for B patterns at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import DiskDetectionConfig
from .correlate import correlate, smooth
from .maxima import Maxima, brightest_first, filter_maxima, local_maxima
from .subpixel import refine_multicorr, refine_poly

__all__ = ["BatchPeaks", "detect_batch"]

#: Pixels per sub-batch of the dense steps (correlation, smoothing, maxima): 16 patterns of 256 x 256.
_DENSE_PIXELS = 1 << 20


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


def detect_batch(patterns: torch.Tensor, template_ft, config: DiskDetectionConfig) -> BatchPeaks:
    """Find the disks of every pattern of ``patterns`` (B, Qx, Qy) float32.

    ``template_ft`` is :func:`~py4dstem_transformer.detection.correlate.template_spectrum` of the probe
    kernel, or None to look for maxima of the patterns themselves (py4DSTEM's ``template=None``).
    """
    n = patterns.shape[0]
    if n == 0:
        return BatchPeaks.empty()
    # the dense steps in sub-batches small enough to stay in cache; the filters on all maxima at once
    step = max(1, _DENSE_PIXELS // (patterns.shape[-1] * patterns.shape[-2]))
    parts, found = [], []
    for s in range(0, n, step):
        part = patterns[s : s + step]
        if config.sigma_dp > 0 and template_ft is not None:  # py4DSTEM smooths the pattern only when it correlates
            part = smooth(part, config.sigma_dp)
        cc, _ = correlate(part, template_ft, config.corrPower)
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


def _subpixel(maxima: Maxima, cc: torch.Tensor, ar: torch.Tensor, config: DiskDetectionConfig):
    """(x, y, intensity) float64 of the maxima of one sub-batch (pattern indices local to ``cc`` / ``ar``)."""
    if config.subpixel in ("pixel", "none"):
        return maxima.x.double(), maxima.y.double(), maxima.value.double()
    x, y, intensity = refine_poly(maxima, ar)
    if config.subpixel == "multicorr":
        x, y = refine_multicorr(x, y, maxima.pattern, cc, config.upsample_factor)
    return x, y, intensity
