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


def simulate_datacube(
    crystals,
    scan_shape: Tuple[int, int] = (16, 16),
    Qshape: Tuple[int, int] = (128, 128),
    q_pixel_size: Optional[float] = None,
    probe_radius: Optional[float] = None,
    dose: float = 1e6,
    num_grains: Optional[int] = None,
    seed: int = 3,
    out: Optional[np.ndarray] = None,
    progress_bar: bool = False,
):
    """A py4DSTEM ``DataCube`` of rendered diffraction images of a simulated polycrystal, and its truth.

    :func:`~py4dstem_transformer.simulation.scan.simulate_scan` makes the disks (Bloch-wave, grains
    20-500 A thick, one grain a hole in the film, a drifting direct beam), :func:`render_patterns`
    the images (the background fraction grows with thickness: 0.05 + 0.3 t / 500 A; over the hole there
    is only the direct beam, so a vacuum probe can be taken there). The detector
    reaches 2.24 1/A from its centre at any size: the default pixel size is ``0.035 * 128 / Qx`` and
    the default probe radius ``3 * Qx / 128`` pixels.

    Parameters
    ----------
    out : (Rx, Ry, Qx, Qy) float32 array, optional
        Where to write the images (e.g. an ``np.memmap`` for scans larger than memory); rendered 256
        patterns at a time.

    Returns
    -------
    datacube : DataCube (no calibration set)
    truth : GroundTruth (orientation, phase, thickness, origin per position)
    disks : Peaks, the simulated disks in detector pixels (the answer key)
    """
    import py4DSTEM

    from ..io.peaks import peaks_from_braggvectors
    from .scan import simulate_scan

    q = int(Qshape[0])
    q_pixel_size = 0.035 * 128 / q if q_pixel_size is None else q_pixel_size
    probe_radius = 3.0 * q / 128 if probe_radius is None else probe_radius
    n = int(np.prod(scan_shape))
    grains = num_grains if num_grains is not None else max(6, n // 40)
    bv, truth = simulate_scan(
        crystals, scan_shape=tuple(scan_shape), num_grains=grains, num_vacuum_grains=1, vacuum_boundaries=False,
        min_relative_intensity=1e-5, q_pixel_size=q_pixel_size, Qshape=tuple(Qshape), origin_offset=(2.4, -1.7),
        origin_drift=2.0, seed=seed, progress_bar=progress_bar,
    )
    disks = peaks_from_braggvectors(bv)
    t = truth.thickness.ravel()
    fraction = np.where(np.isnan(t), 0.0, 0.05 + 0.3 * np.nan_to_num(t) / 500)  # over the hole: the bare probe
    images = np.zeros((*scan_shape, *Qshape), dtype=np.float32) if out is None else out
    flat = images.reshape(n, *Qshape)
    rng, offsets, origin = np.random.default_rng(seed), disks.offsets, truth.origin.reshape(-1, 2)
    for b0 in range(0, n, 256):
        b1 = min(n, b0 + 256)
        s, e = offsets[b0], offsets[b1]
        flat[b0:b1] = render_patterns(
            disks.qx[s:e], disks.qy[s:e], disks.intensity[s:e], disks.counts[b0:b1], tuple(Qshape), origin[b0:b1],
            q_pixel_size, probe_radius, dose, fraction[b0:b1], rng,
        )
    return py4DSTEM.DataCube(data=images), truth, disks
