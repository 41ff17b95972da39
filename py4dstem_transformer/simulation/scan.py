"""Synthetic 4D-STEM experiments as py4DSTEM ``BraggVectors``, with ground truth: :func:`simulate_scan`.

A Voronoi grain map (no wrap-around at the scan edges), one orientation, phase and thickness per
grain, one py4DSTEM simulation per grain (so a 256 x 256 scan costs as much as its grains), then
independent damage per scan position: position jitter, multiplicative intensity noise, dropped
weak disks and spurious disks. Peaks are written in raw detector pixels around a direct beam whose
position (the origin) is off-centre and drifts slowly across the scan, with a Q pixel size, so the
BraggVectors look like ``find_Bragg_disks`` output after ``calibration.set_origin`` and
``set_Q_pixel_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..core.defaults import ACCEL_VOLTAGE, K_MAX
from ..core.patterns import rank_within_pattern
from ..io.detector import DetectorCalibration
from ..io.peaks import Peaks, peaks_to_braggvectors
from .simulator import PatternSimulator, direct_beam

__all__ = ["DAMAGED", "GroundTruth", "simulate_scan", "simulate_orientations", "simulate_random_orientations",
           "voronoi_grains"]


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """What a synthetic scan was made of.

    Attributes
    ----------
    orientation_matrices : (Rx, Ry, 3, 3) float64
        py4DSTEM convention (lab -> crystal); zeros at vacuum positions.
    phase : (Rx, Ry) int64
        Index into the ``crystals`` passed to :func:`simulate_scan`; -1 for vacuum.
    thickness : (Rx, Ry) float64
        A; NaN for vacuum.
    grain : (Rx, Ry) int64
        Grain index; -1 for vacuum (grain boundaries and vacuum grains).
    origin : (Rx, Ry, 2) float64
        Direct-beam position in detector pixels.
    q_pixel_size : float
        1/A per detector pixel.
    grain_orientations : (G, 3, 3), grain_phase : (G,), grain_thickness : (G,)
        Per grain (vacuum grains have phase -1).
    """

    orientation_matrices: np.ndarray
    phase: np.ndarray
    thickness: np.ndarray
    grain: np.ndarray
    origin: np.ndarray
    q_pixel_size: float
    grain_orientations: np.ndarray
    grain_phase: np.ndarray
    grain_thickness: np.ndarray


def voronoi_grains(scan_shape: Tuple[int, int], num_grains: int, rng: np.random.Generator,
                   boundaries: bool = True) -> np.ndarray:
    """(Rx, Ry) int64 grain labels: nearest of ``num_grains`` random seed points (continuous
    positions inside the scan, no wrap-around). With ``boundaries``, positions whose right or lower
    neighbour belongs to another grain are -1, giving 1-pixel-wide boundaries."""
    from scipy.spatial import cKDTree

    Rx, Ry = scan_shape
    seeds = rng.uniform((0, 0), (Rx, Ry), size=(num_grains, 2))
    rx, ry = np.meshgrid(np.arange(Rx) + 0.5, np.arange(Ry) + 0.5, indexing="ij")
    labels = cKDTree(seeds).query(np.stack([rx.ravel(), ry.ravel()], 1))[1].reshape(Rx, Ry).astype(np.int64)
    if boundaries:
        edge = np.zeros((Rx, Ry), dtype=bool)
        edge[:-1] |= labels[:-1] != labels[1:]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        labels = np.where(edge, -1, labels)
    return labels


def simulate_scan(
    crystals,
    scan_shape: Tuple[int, int] = (64, 64),
    num_grains: int = 20,
    phase_fraction: Optional[Sequence[float]] = None,
    thickness: Union[float, Tuple[float, float]] = (20.0, 500.0),
    dynamical: bool = True,
    accel_voltage: float = ACCEL_VOLTAGE,
    k_max: float = K_MAX,
    sigma_excitation_error: Optional[float] = None,
    min_relative_intensity: float = 1e-3,
    q_pixel_size: float = 0.0175,
    Qshape: Tuple[int, int] = (256, 256),
    origin_offset: Tuple[float, float] = (3.3, -2.1),
    origin_drift: float = 1.5,
    vacuum_boundaries: bool = True,
    num_vacuum_grains: int = 0,
    jitter: float = 0.0,
    intensity_noise: float = 0.0,
    drop_weakest: float = 0.0,
    spurious: int = 0,
    seed: int = 0,
    progress_bar: bool = True,
):
    """A synthetic polycrystal scan as py4DSTEM ``BraggVectors`` plus its :class:`GroundTruth`.

    Parameters
    ----------
    crystals : Crystal or sequence of Crystal
        The phases (read only).
    scan_shape : (Rx, Ry)
    num_grains : int
        Voronoi grains; each gets a uniformly random orientation, a phase and a thickness.
    phase_fraction : sequence of float, optional
        Probability of each crystal per grain (default equal).
    thickness : float or (min, max)
        A; a range draws one uniform thickness per grain (dynamical only matters).
    dynamical, accel_voltage, k_max, sigma_excitation_error :
        Simulation, as in :class:`~py4dstem_transformer.simulation.simulator.PatternSimulator`.
    min_relative_intensity : float
        Disks fainter than this fraction of the brightest diffracted disk are not detected.
    q_pixel_size : float
        1/A per pixel; the default puts ``k_max`` = 2.1 inside the 256-pixel detector.
    Qshape : (Qx, Qy)
        Detector pixels; peaks falling off it are lost.
    origin_offset : (dx, dy)
        Mean direct-beam offset from the detector centre (pixels).
    origin_drift : float
        Peak-to-peak slow drift of the origin across the scan (pixels).
    vacuum_boundaries : bool
        Grain-boundary positions show only the direct beam (vacuum).
    num_vacuum_grains : int
        Grains that are holes (vacuum).
    jitter : float
        Standard deviation (1/A) of Gaussian noise on each diffracted disk's qx and qy.
    intensity_noise : float
        Each disk's intensity is multiplied by a log-normal factor of this standard deviation.
    drop_weakest : float
        Fraction of each pattern's weakest diffracted disks that is removed.
    spurious : int
        False disks added at every non-vacuum position (uniform in ``0.2 <= |q| <= k_max``,
        2-30 % of the brightest diffracted disk).
    seed : int
    progress_bar : bool

    Returns
    -------
    bragg_peaks : py4DSTEM BraggVectors
        Raw vectors in detector pixels, direct beam included; origin (per position) and Q pixel
        size (1/A) calibrated.
    truth : GroundTruth
    """
    crystals = list(crystals) if isinstance(crystals, (list, tuple)) else [crystals]
    rng = np.random.default_rng(seed)
    grains = voronoi_grains(scan_shape, num_grains, rng, vacuum_boundaries)
    grain_phase, grain_m, grain_t = _grain_properties(num_grains, len(crystals), phase_fraction, thickness,
                                                      num_vacuum_grains, rng)
    sims = [PatternSimulator(c, accel_voltage, k_max, dynamical, sigma_excitation_error) for c in crystals]
    detector = _Detector(k_max, min_relative_intensity, q_pixel_size, tuple(Qshape), origin_offset, origin_drift)
    damage = _Damage(jitter, intensity_noise, drop_weakest, spurious)
    return _render(grains, grain_phase, grain_m, grain_t, sims, rng, detector, damage, progress_bar)


#: The damage of the "damaged" test patterns (accuracy benchmark, confidence calibration):
#: 0.01 1/A position jitter, 20% intensity noise, the weakest 20% of disks dropped, one spurious disk.
DAMAGED = {"jitter": 0.01, "intensity_noise": 0.2, "drop_weakest": 0.2, "spurious": 1}


@dataclass(frozen=True)
class _Detector:
    k_max: float
    min_relative_intensity: float
    q_pixel_size: float
    Qshape: Tuple[int, int]
    origin_offset: Tuple[float, float]
    origin_drift: float


@dataclass(frozen=True)
class _Damage:
    jitter: float
    intensity_noise: float
    drop_weakest: float
    spurious: int


def simulate_orientations(crystals, orientation_matrices, thickness, phase=None, scan_shape=None, *,
                          dynamical: bool = True, accel_voltage: float = ACCEL_VOLTAGE, k_max: float = K_MAX,
                          sigma_excitation_error: Optional[float] = None, min_relative_intensity: float = 1e-3,
                          q_pixel_size: float = 0.0175, Qshape: Tuple[int, int] = (256, 256),
                          origin_offset: Tuple[float, float] = (3.3, -2.1), origin_drift: float = 1.5,
                          jitter: float = 0.0, intensity_noise: float = 0.0, drop_weakest: float = 0.0,
                          spurious: int = 0, seed: int = 0, progress_bar: bool = True):
    """One scan position per given orientation: a test set with known answers, as BraggVectors.

    Same detector, calibration and damage model as :func:`simulate_scan`, but every position has its
    own orientation (``orientation_matrices`` (N, 3, 3)), thickness (A, scalar or (N,)) and phase
    (index into ``crystals``, default 0). ``scan_shape`` defaults to ``(1, N)``.

    Returns ``(bragg_peaks, truth)`` like :func:`simulate_scan`.
    """
    crystals = list(crystals) if isinstance(crystals, (list, tuple)) else [crystals]
    m = np.asarray(orientation_matrices, dtype=np.float64).reshape(-1, 3, 3)
    n = len(m)
    scan_shape = (1, n) if scan_shape is None else tuple(scan_shape)
    if int(np.prod(scan_shape)) != n:
        raise ValueError(f"scan_shape {scan_shape} does not hold {n} orientations")
    grain_t = np.broadcast_to(np.asarray(thickness, dtype=np.float64), (n,)).copy()
    grain_phase = np.zeros(n, np.int64) if phase is None else np.asarray(phase, np.int64).reshape(n)
    sims = [PatternSimulator(c, accel_voltage, k_max, dynamical, sigma_excitation_error) for c in crystals]
    grains = np.arange(n).reshape(scan_shape)
    detector = _Detector(k_max, min_relative_intensity, q_pixel_size, tuple(Qshape), origin_offset, origin_drift)
    damage = _Damage(jitter, intensity_noise, drop_weakest, spurious)
    return _render(grains, grain_phase, m, grain_t, sims, np.random.default_rng(seed), detector, damage, progress_bar)


def simulate_random_orientations(crystal, n: int, seed: int, damaged: bool = False,
                                 thickness: Tuple[float, float] = (20.0, 500.0), progress_bar: bool = False, **kwargs):
    """``n`` patterns of ``crystal`` at orientations uniform on SO(3), thickness uniform in ``thickness``
    (A), :data:`DAMAGED` if ``damaged``: the accuracy benchmark's test set and the confidence
    calibration's fit set (other seeds). ``kwargs`` go to :func:`simulate_orientations`
    (e.g. ``accel_voltage``, ``k_max``). Returns ``(bragg_peaks, truth)``; the orientations are
    ``truth.orientation_matrices[0]``.
    """
    from ..core.rotations import random_rotations

    rng = np.random.default_rng(seed)
    m = random_rotations(n, seed=seed).numpy()
    return simulate_orientations([crystal], m, rng.uniform(*thickness, n), seed=seed + 1, progress_bar=progress_bar,
                                 **(DAMAGED if damaged else {}), **kwargs)


def _render(grains, grain_phase, grain_m, grain_t, sims, rng, detector: _Detector, damage: _Damage, progress_bar):
    """Simulate one pattern per grain, spread it over the grain's positions, damage, go to pixels."""
    from tqdm.auto import tqdm

    d = detector
    patterns = []
    for g in tqdm(range(len(grain_m)), desc="Simulating patterns", disable=not progress_bar):
        patterns.append(None if grain_phase[g] < 0 else
                        _detected(sims[grain_phase[g]].simulate(grain_m[g], [grain_t[g]])[0], d.k_max,
                                  d.min_relative_intensity))
    grains = np.where((grains >= 0) & (grain_phase[np.maximum(grains, 0)] >= 0), grains, -1)
    disks = _scan_disks(grains, patterns, rng, damage.jitter, damage.intensity_noise, damage.drop_weakest,
                        damage.spurious, d.k_max)
    origin = _origin(grains.shape, d.Qshape, d.origin_offset, d.origin_drift)
    peaks = _to_pixels(disks, origin, d.q_pixel_size, d.Qshape, grains.shape)
    bragg_peaks = peaks_to_braggvectors(peaks, d.Qshape)
    return bragg_peaks, _truth(grains, grain_phase, grain_m, grain_t, origin, d.q_pixel_size)


def _grain_properties(num_grains, num_phases, phase_fraction, thickness, num_vacuum_grains, rng):
    from ..core.rotations import random_rotations

    p = None if phase_fraction is None else np.asarray(phase_fraction, float) / np.sum(phase_fraction)
    phase = rng.choice(num_phases, size=num_grains, p=p).astype(np.int64)
    phase[rng.permutation(num_grains)[:num_vacuum_grains]] = -1
    matrices = random_rotations(num_grains, seed=int(rng.integers(2**31))).numpy()
    if np.ndim(thickness) == 0:
        t = np.full(num_grains, float(thickness))
    else:
        lo, hi = thickness
        t = rng.uniform(lo, hi, num_grains)
    return phase, matrices, t


def _detected(data: np.ndarray, k_max: float, min_relative_intensity: float):
    """(qx, qy, intensity) with the direct beam first, then the detectable diffracted disks."""
    direct = direct_beam(data)
    d = data[~direct & (np.hypot(data["qx"], data["qy"]) <= k_max)]
    brightest = d["intensity"].max() if len(d) else 1.0
    d = d[d["intensity"] >= min_relative_intensity * brightest]
    beam = data["intensity"][direct]
    beam = float(beam[0]) if len(beam) else brightest
    return (np.concatenate([[0.0], d["qx"]]), np.concatenate([[0.0], d["qy"]]),
            np.concatenate([[beam], d["intensity"]]) / brightest)


def _scan_disks(grains, patterns, rng, jitter, intensity_noise, drop_weakest, spurious, k_max):
    """Flat (position, qx, qy, intensity, is_direct) of every disk of the scan, in 1/A."""
    flat = grains.ravel()
    vacuum = (np.zeros(1), np.zeros(1), np.ones(1))  # the direct beam only
    table = [p if p is not None else vacuum for p in patterns] + [vacuum]
    lengths = np.array([len(p[0]) for p in table], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    source = np.where(flat < 0, len(table) - 1, flat)  # row of ``table`` for each position
    counts = lengths[source]
    position = np.repeat(np.arange(len(flat)), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    within = np.arange(len(position)) - first[position]  # 0 = the direct beam
    rows = starts[source][position] + within
    qx, qy, inten = (np.concatenate([p[j] for p in table])[rows] for j in range(3))
    direct = within == 0
    n_diff = int((~direct).sum())
    if jitter > 0:
        qx[~direct] += rng.normal(0.0, jitter, n_diff)
        qy[~direct] += rng.normal(0.0, jitter, n_diff)
    if intensity_noise > 0:
        inten *= np.exp(rng.normal(-0.5 * intensity_noise**2, intensity_noise, len(inten)))
    keep = _keep_brighter(position, inten, direct, drop_weakest) if drop_weakest > 0 else np.ones(len(qx), bool)
    disks = [position[keep], qx[keep], qy[keep], inten[keep], direct[keep]]
    if spurious > 0:
        disks = _add_spurious(disks, flat >= 0, spurious, k_max, rng)
    order = np.argsort(disks[0], kind="stable")
    return [a[order] for a in disks]


def _keep_brighter(position, intensity, direct, fraction):
    """Mask dropping ``floor(fraction * n)`` of the weakest diffracted disks of each position."""
    diffracted = np.flatnonzero(~direct)
    order, rank = rank_within_pattern(position[diffracted], intensity[diffracted])  # by position, dimmest first
    order = diffracted[order]
    n = np.bincount(position[order], minlength=position.max() + 1)
    keep = np.ones(len(position), dtype=bool)
    keep[order[rank < np.floor(fraction * n[position[order]])]] = False
    return keep


def _add_spurious(disks, crystalline, spurious, k_max, rng):
    """``spurious`` false disks at every non-vacuum position."""
    where = np.repeat(np.flatnonzero(crystalline), spurious)
    r = rng.uniform(0.2, k_max, len(where))
    angle = rng.uniform(-np.pi, np.pi, len(where))
    new = [where, r * np.cos(angle), r * np.sin(angle), rng.uniform(0.02, 0.3, len(where)),
           np.zeros(len(where), dtype=bool)]
    return [np.concatenate([a, b]) for a, b in zip(disks, new)]


def _origin(scan_shape, Qshape, offset, drift):
    """(Rx, Ry, 2) direct-beam positions (pixels): centre + offset + a slow drift."""
    Rx, Ry = scan_shape
    u, v = np.meshgrid(np.linspace(-0.5, 0.5, Rx), np.linspace(-0.5, 0.5, Ry), indexing="ij")
    ox = Qshape[0] / 2 + offset[0] + drift * u
    oy = Qshape[1] / 2 + offset[1] + drift * 0.5 * np.sin(np.pi * v)
    return np.stack([ox, oy], axis=-1)


def _to_pixels(disks, origin, q_pixel_size, Qshape, scan_shape) -> Peaks:
    position, qx, qy, intensity, _ = disks
    flat_origin = origin.reshape(-1, 2)
    px = flat_origin[position, 0] + qx / q_pixel_size
    py = flat_origin[position, 1] + qy / q_pixel_size
    on = (px >= 0) & (px <= Qshape[0] - 1) & (py >= 0) & (py <= Qshape[1] - 1)
    counts = np.bincount(position[on], minlength=int(np.prod(scan_shape))).astype(np.int64)
    calibration = DetectorCalibration((origin[..., 0], origin[..., 1]), float(q_pixel_size))
    return Peaks(px[on], py[on], intensity[on], counts, tuple(scan_shape), calibration)


def _truth(grains, grain_phase, grain_m, grain_t, origin, q_pixel_size) -> GroundTruth:
    inside = grains >= 0
    g = np.maximum(grains, 0)
    matrices = np.where(inside[..., None, None], grain_m[g], 0.0)
    return GroundTruth(matrices, np.where(inside, grain_phase[g], -1), np.where(inside, grain_t[g], np.nan),
                       grains, origin, float(q_pixel_size), grain_m, grain_phase, grain_t)
