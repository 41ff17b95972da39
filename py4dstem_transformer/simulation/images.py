"""Diffraction images from disk positions: what a detector would record, for testing disk detection.

Every disk is an image of the condenser aperture, so a pattern is a set of points convolved with one
probe disk (py4DSTEM's ``Probe.generate_synthetic_probe``: a soft-edged disk). Each pattern's disks
share ``1 - f`` of its electrons in proportion to their intensities, a diffuse background peaked at the
direct beam (Lorentzian in |q|, half width 0.3 1/A: thermal-diffuse and inelastic scattering) takes
the other fraction ``f``, and the counts are Poisson. Everything is numpy on stacks of patterns.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

__all__ = ["probe_image", "render_patterns"]


def probe_image(radius: float, shape: Tuple[int, int], width: float = 1.0) -> np.ndarray:
    """py4DSTEM's synthetic probe (a disk of ``radius`` pixels, edge ``width``) at the detector centre, sum 1."""
    import py4DSTEM

    probe = py4DSTEM.Probe.generate_synthetic_probe(radius, width, tuple(shape)).probe
    return probe / probe.sum()


def render_patterns(
    x: np.ndarray,
    y: np.ndarray,
    intensity: np.ndarray,
    counts: np.ndarray,
    shape: Tuple[int, int] = (128, 128),
    origin: Optional[np.ndarray] = None,
    q_pixel_size: float = 0.035,
    probe_radius: float = 3.0,
    dose: float = 1e6,
    diffuse_fraction: Union[float, np.ndarray] = 0.1,
    rng: Union[int, np.random.Generator, None] = 0,
) -> np.ndarray:
    """Poisson-noisy diffraction images of B patterns, (B, Qx, Qy) float32 electron counts.

    Parameters
    ----------
    x, y, intensity : (P,) disk centres (detector pixels, sub-pixel) and relative intensities
    counts : (B,) disks per pattern (the flat arrays hold pattern after pattern)
    shape : detector pixels (Qx, Qy)
    origin : (B, 2) direct-beam position per pattern (pixels), where the diffuse background peaks;
        default the detector centre
    q_pixel_size : 1/A per pixel (sets the background's width)
    probe_radius : disk radius, pixels
    dose : electrons per pattern
    diffuse_fraction : float or (B,) fraction of the electrons in the diffuse background
        (patterns without disks get only background)
    rng : seed or Generator for the Poisson noise
    """
    rng = np.random.default_rng(rng)
    counts = np.asarray(counts, dtype=np.int64)
    n, (qx, qy) = len(counts), shape
    pos = np.repeat(np.arange(n), counts)
    x, y, w = (np.asarray(a, dtype=np.float64) for a in (x, y, intensity))
    total = np.bincount(pos, w, n)
    w = w / np.where(total > 0, total, 1)[pos]  # each pattern's disks share one unit of beam
    points = np.zeros((n, qx, qy))
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    inside = (x0 >= 0) & (y0 >= 0) & (x0 < qx) & (y0 < qy)
    for dx, dy, f in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(
            points,
            (pos[inside], np.minimum(x0 + dx, qx - 1)[inside], np.minimum(y0 + dy, qy - 1)[inside]),
            (w * f)[inside],
        )  # sub-pixel: the point shared among its four pixels
    probe_ft = np.fft.rfft2(np.fft.ifftshift(probe_image(probe_radius, shape)))
    sharp = np.fft.irfft2(np.fft.rfft2(points) * probe_ft, s=shape).clip(0)  # convolve with the probe
    if origin is None:
        origin = np.tile([qx / 2, qy / 2], (n, 1))
    origin = np.asarray(origin, dtype=np.float64).reshape(n, 2)
    kx, ky = np.meshgrid(np.arange(qx), np.arange(qy), indexing="ij")
    k = np.hypot(kx - origin[:, 0, None, None], ky - origin[:, 1, None, None]) * q_pixel_size
    diffuse = 1 / (1 + (k / 0.3) ** 2)
    diffuse /= diffuse.sum((1, 2), keepdims=True)
    f = np.broadcast_to(np.asarray(diffuse_fraction, dtype=np.float64), (n,)).copy()
    f[counts == 0] = 1.0
    mean = dose * ((1 - f)[:, None, None] * sharp + f[:, None, None] * diffuse)
    return rng.poisson(mean).astype(np.float32)
