"""Is the calibration right for these crystals? The radial distribution of the peaks against each phase's rings.

Whatever the orientations, every Bragg peak of a phase lies at ``|q| = |g|`` of one of its reflections. So
the histogram of peak radii over a whole scan shows rings, and scaling the measured radii by the factor the
Q pixel size is off by moves them onto the crystal's. :func:`calibration_check` scans that factor and
reports, per phase, the share of peaks that land within ``tol`` of a strong ring: a clear maximum near 1
says the calibration and the crystal agree; a maximum elsewhere says by how much the pixel size (or the
lattice parameter) is off; no clear maximum says the phase is not in the data (or its rings are too dense
to tell). It is the check to run before mapping measured data.
"""

from __future__ import annotations

import contextlib
import io
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["peak_radii", "ring_radii", "ring_match", "calibration_check", "plot_radial_histogram"]


def peak_radii(bragg_peaks, direct_beam_radius: float = 0.05) -> np.ndarray:
    """(P,) radii ``|q|`` (1/A) of every peak of a scan, the direct beam (``|q| < direct_beam_radius``) left out.

    ``bragg_peaks``: anything the mapper reads (``BraggVectors``, a calibrated ``PointListArray``, flat
    ``Peaks``, a file path); raw positions are calibrated as the mapper would.
    """
    from ..io.peaks import as_peaks_source, calibrated_xy

    source = as_peaks_source(bragg_peaks)
    qx, qy = calibrated_xy(source if hasattr(source, "qx") else source.read(0, source.num_positions))
    q = np.hypot(qx, qy)
    return q[q >= direct_beam_radius]


def ring_radii(crystal, k_max: float = 2.0, min_strength: float = 0.05) -> Tuple[np.ndarray, np.ndarray]:
    """The rings of ``crystal`` out to ``k_max`` (1/A): radii and strengths.

    A ring's strength is the sum of kinematic ``|F|^2`` over its reflections (multiplicity included),
    relative to the strongest ring; rings below ``min_strength`` are left out. Computed on a private copy
    (the user's crystal is not changed).
    """
    from ..core.crystal import private_copy

    fresh = private_copy(crystal)
    with contextlib.redirect_stdout(io.StringIO()):
        fresh.calculate_structure_factors(k_max, tol_structure_factor=1e-4)
    g = np.asarray(fresh.g_vec_leng, np.float64)
    f2 = np.abs(np.asarray(fresh.struct_factors)) ** 2
    keep = g > 1e-6
    radius, inverse = np.unique(np.round(g[keep], 4), return_inverse=True)
    strength = np.bincount(inverse, f2[keep])
    strength = strength / strength.max()
    strong = strength >= min_strength
    return radius[strong], strength[strong]


def ring_match(q: np.ndarray, radii: np.ndarray, scales: np.ndarray, tol: float = 0.008) -> np.ndarray:
    """(len(scales),) the share of radii ``q`` that lie within ``tol`` (1/A) of a ring after ``q * scale``."""
    q, radii = np.sort(np.asarray(q, np.float64)), np.sort(np.asarray(radii, np.float64))
    out = np.empty(len(scales))
    for i, s in enumerate(np.asarray(scales, np.float64)):
        # peaks inside [r - tol, r + tol] / s for each ring, merged where intervals overlap
        lo, hi = np.searchsorted(q, (radii - tol) / s), np.searchsorted(q, (radii + tol) / s, side="right")
        inside = np.zeros(len(q) + 1, np.int64)
        np.add.at(inside, lo, 1)
        np.add.at(inside, hi, -1)
        out[i] = (np.cumsum(inside)[:-1] > 0).mean() if len(q) else np.nan
    return out


def calibration_check(bragg_peaks, crystals: Sequence, names: Optional[Sequence[str]] = None,
                      scales: np.ndarray = np.linspace(0.95, 1.05, 201), tol: float = 0.008,
                      q_range: Tuple[float, float] = (0.15, 1.6), min_strength: float = 0.05) -> dict:
    """Per phase: at which scale of the measured radii the most peaks sit on the crystal's rings.

    Parameters
    ----------
    bragg_peaks : the scan's peaks (see :func:`peak_radii`)
    crystals : py4DSTEM Crystals; names : their labels (default the formulas)
    scales : the factors tried (``q_true = scale * q_measured``: multiply the Q pixel size by it)
    tol : ring half-width (1/A); q_range : radii used (1/A), away from the direct beam and the detector edge

    Returns
    -------
    dict with ``scales``, ``radii`` (the peaks used) and ``phases``: per name ``best_scale``,
    ``matched_best`` (share of peaks on a ring at the best scale), ``matched_at_1`` (at scale 1),
    ``background`` (the median share over the scales tried: what rings catch by chance) and ``curve``.
    """
    from ..simulation.phases import formula

    if names is None:
        names = [formula(c.numbers) for c in crystals]
    if len(names) != len(crystals):
        raise ValueError(f"{len(crystals)} crystals but {len(names)} names")
    scales = np.asarray(scales, np.float64)
    q = peak_radii(bragg_peaks)
    q = q[(q >= q_range[0]) & (q <= q_range[1])]
    if q.size == 0:
        raise ValueError(f"no peaks with {q_range[0]} <= |q| <= {q_range[1]} 1/A: are the peaks calibrated to 1/A "
                         "(BraggVectors with a Q pixel size set, or a calibrated PointListArray)?")
    k_max = q_range[1] * scales.max() + tol
    phases = {}
    for name, crystal in zip(names, crystals):
        radii, _ = ring_radii(crystal, k_max, min_strength)
        curve = ring_match(q, radii, scales, tol)
        best = int(np.argmax(curve))
        phases[name] = {"best_scale": float(scales[best]), "matched_best": float(curve[best]),
                        "matched_at_1": float(ring_match(q, radii, np.array([1.0]), tol)[0]),
                        "background": float(np.median(curve)), "curve": curve}
    return {"scales": scales, "radii": q, "phases": phases}


def plot_radial_histogram(bragg_peaks, crystals: Sequence, names: Optional[Sequence[str]] = None,
                          k_max: float = 2.0, bins: int = 400, min_strength: float = 0.05, ax=None,
                          figsize=(9, 3.5), returnfig: bool = False):
    """Histogram of the peak radii (direct beam left out) with each phase's rings marked below it (tick
    height: ring strength)."""
    import matplotlib.pyplot as plt

    from ..io.phase_map import PHASE_COLORS
    from ..simulation.phases import formula

    names = [formula(c.numbers) for c in crystals] if names is None else list(names)
    q = peak_radii(bragg_peaks)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=figsize)
    counts, edges, _ = ax.hist(q, bins=bins, range=(0, k_max), color="0.3", histtype="stepfilled")
    top = counts.max()
    for i, (name, crystal) in enumerate(zip(names, crystals)):
        radii, strength = ring_radii(crystal, k_max, min_strength)
        base = -(i + 1) * 0.12 * top
        ax.vlines(radii, base, base + 0.1 * top * strength, color=PHASE_COLORS[i % len(PHASE_COLORS)], label=name)
    ax.set(xlabel="|q| (1/Å)", ylabel="peaks", xlim=(0, k_max), ylim=(-(len(names) + 0.2) * 0.12 * top, 1.05 * top))
    ax.legend(loc="upper right", title="rings (height: |F|² summed)")
    if returnfig:
        return fig, ax
    return None
