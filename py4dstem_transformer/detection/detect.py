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
from .maxima import filter_maxima, local_maxima
from .subpixel import refine_multicorr, refine_poly

__all__ = ["BatchPeaks", "detect_batch"]


@dataclass
class BatchPeaks:
    """The peaks of a batch, flat: ``counts`` (B,) int64 and (P,) float64 ``x``, ``y``, ``intensity``
    (pixels, correlation height), pattern after pattern in py4DSTEM's order within each."""

    counts: np.ndarray
    x: np.ndarray
    y: np.ndarray
    intensity: np.ndarray


def detect_batch(patterns: torch.Tensor, template_ft, config: DiskDetectionConfig) -> BatchPeaks:
    """Find the disks of every pattern of ``patterns`` (B, Qx, Qy) float32.

    ``template_ft`` is :func:`~py4dstem_transformer.detection.correlate.template_spectrum` of the probe
    kernel, or None to look for maxima of the patterns themselves (py4DSTEM's ``template=None``).
    """
    n = patterns.shape[0]
    if n == 0:
        z = np.zeros(0)
        return BatchPeaks(np.zeros(0, dtype=np.int64), z, z, z)
    if config.sigma_dp > 0 and template_ft is not None:  # py4DSTEM smooths the pattern only when it correlates
        patterns = smooth(patterns, config.sigma_dp)
    cc, _ = correlate(patterns, template_ft, config.corrPower)
    ar = smooth(cc.clamp_min(0), config.sigma_cc)
    maxima = local_maxima(ar, config.edgeBoundary, config.minAbsoluteIntensity)
    maxima = filter_maxima(
        maxima,
        n,
        min_relative=config.minRelativeIntensity,
        relative_to_peak=config.relativeToPeak,
        min_spacing=config.minPeakSpacing,
        max_num_peaks=config.maxNumPeaks,
    )
    pattern = maxima.pattern
    if config.subpixel in ("pixel", "none"):
        x, y, intensity = maxima.x.double(), maxima.y.double(), maxima.value.double()
    else:
        x, y, intensity = refine_poly(maxima, ar)
        if config.subpixel == "multicorr":
            x, y = refine_multicorr(x, y, pattern, cc, config.upsample_factor)
            # py4DSTEM sorts multicorr's peaks by intensity again (the poly interpolation)
            order = torch.argsort(intensity, descending=True, stable=True)
            order = order[torch.argsort(pattern[order], stable=True)]
            pattern, x, y, intensity = pattern[order], x[order], y[order], intensity[order]
    counts = torch.bincount(pattern, minlength=n)
    return BatchPeaks(*(t.cpu().numpy() for t in (counts.long(), x, y, intensity)))
