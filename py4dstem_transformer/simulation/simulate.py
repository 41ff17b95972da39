"""Simulated training sets from any py4DSTEM ``Crystal``: :func:`generate_training_set`.

How it is fast without being approximate
----------------------------------------
Kinematic and Bloch-wave intensities depend on the orientation only through the beam direction
``M[:, 2]`` (excitation errors and foil normal); an in-plane rotation only rotates (qx, qy). So each
beam direction is simulated once, at in-plane angle 0, and the training loader applies continuous
in-plane angles and mirror copies (:mod:`py4dstem_transformer.simulation.training_set`). A Bloch solve is
one eigen-decomposition for the whole thickness list. ``tol_structure_factor=1e-4`` in the
dynamical structure factors drops the forbidden reflections that py4DSTEM otherwise keeps as
uncoupled beams (7x faster for Cu, same intensities). Beam directions run in ``n_jobs`` processes.

Every simulation runs on a private copy of the crystal, so the user's ``Crystal`` (its structure
factors, voltage, orientation plan) is never changed.

Indistinguishable patterns (the paper's "dedup")
------------------------------------------------
A pattern is dropped when it cannot fix an orientation: no disk, or all disks on one line through
the origin (a systematic row: every rotation about that row gives it, so it would be asked to map
to contradictory labels). Within one beam direction, thicknesses that give the same disks with
intensities equal within ``dedup_tolerance`` are stored once (same label, no new information).
Everything else is kept: two non-collinear reflections fix the orientation up to the point-group
rotations (``config.symmetry``) and, off a zone axis, the 180-degree flip about the beam, which a
symmetry- and flip-aware loss absorbs. The paper's cross-zone-axis comparison of sorted peak
distances (intensities ignored) mostly caught sparse patterns such as two-disk systematic rows,
which are dropped here by construction; it also merged neighbouring beam directions whose labels
are close anyway, which only thinned the data.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from .simulator import (DEFAULT_THICKNESS, SIGMA_DYNAMICAL, SIGMA_KINEMATIC, PatternSimulator, example_crystal,
                        is_collinear, training_disks)
from .training_set import TrainingSet, TrainingSetConfig
from ..core.defaults import ACCEL_VOLTAGE, K_MAX
from ..core.crystal import CrystalIdentity
from ..core.zone_axes import fundamental_zone, pattern_symmetry, triangle_zone, zone_axis_matrices

__all__ = ["generate_training_set", "register"]


def _zone_axis_patterns(sim: PatternSimulator, matrix, thickness, k_max, min_rel, dedup_tol):
    """Stored patterns of one beam direction: (thicknesses, counts, qx, qy, intensity, stats)."""
    kept, kept_thickness, stats = [], [], {"empty": 0, "collinear": 0, "duplicate": 0}
    for t, data in zip(thickness, sim.simulate(matrix, thickness)):
        disks = training_disks(data, k_max, min_rel)
        if disks is None:
            stats["empty"] += 1
        elif is_collinear(disks[0], disks[1]):
            stats["collinear"] += 1
        elif any(_same(disks, other, dedup_tol) for other in kept):
            stats["duplicate"] += 1
        else:
            kept.append(disks)
            kept_thickness.append(t)
    counts = np.array([len(d[0]) for d in kept], dtype=np.int64)
    flat = [np.concatenate([d[j] for d in kept]).astype(np.float32) if kept else np.zeros(0, np.float32)
            for j in range(3)]
    return np.array(kept_thickness, dtype=np.float64), counts, *flat, stats


def _same(a, b, tol) -> bool:
    return a[3].shape == b[3].shape and np.array_equal(a[3], b[3]) and np.max(np.abs(a[2] - b[2])) <= tol


_WORKER: dict = {}
#: multiprocessing start method: fork where the platform has it (no ``__main__`` guard needed, fast
#: start; the workers use only numpy/scipy, whose OpenBLAS is fork-safe), spawn elsewhere.
START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"


def _init_worker(config: TrainingSetConfig) -> None:
    _WORKER["sim"], _WORKER["config"] = PatternSimulator.from_config(config), config


def _run_task(task):
    index, matrix, thickness = task
    c = _WORKER["config"]
    return index, _zone_axis_patterns(_WORKER["sim"], matrix, thickness, c.k_max, c.min_relative_intensity,
                                      c.dedup_tolerance)


def _run_all(config, tasks, n_jobs, progress_bar):
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="Simulating beam directions", unit="dir", disable=not progress_bar)
    results = [None] * len(tasks)
    if n_jobs == 1:
        _init_worker(config)
        for task in tasks:
            results[task[0]] = _run_task(task)[1]
            bar.update()
    else:
        import multiprocessing as mp

        chunk = max(1, len(tasks) // (8 * n_jobs))
        with mp.get_context(START_METHOD).Pool(n_jobs, _init_worker, (config,)) as pool:
            for index, result in pool.imap_unordered(_run_task, tasks, chunksize=chunk):
                results[index] = result
                bar.update()
    bar.close()
    _WORKER.clear()
    return results


def generate_training_set(
    crystal,
    accel_voltage: float = ACCEL_VOLTAGE,
    k_max: float = K_MAX,
    zone_axis_range="auto",
    angle_step_zone_axis: float = 2.0,
    num_zone_axes: Optional[int] = None,
    zone_axes: Optional[np.ndarray] = None,
    thickness: Sequence[float] = DEFAULT_THICKNESS,
    num_thicknesses: Optional[int] = None,
    dynamical: bool = True,
    sigma_excitation_error: Optional[float] = None,
    precession_angle_degrees: Optional[float] = None,
    min_relative_intensity: float = 1e-3,
    tol_structure_factor: float = 1e-4,
    thermal_sigma: float = 0.08,
    dynamical_method: str = "WK-CP",
    dedup_tolerance: float = 1e-6,
    seed: int = 0,
    n_jobs: int = 1,
    progress_bar: bool = True,
) -> TrainingSet:
    """Simulate a training set of Bragg-disk patterns with orientation labels.

    Each beam direction is simulated once (in-plane angle 0) at every thickness; the in-plane
    rotation, and for centrosymmetric crystals the mirror (label ``M @ diag(1, -1, -1)``), are
    left to the training loader (see :mod:`py4dstem_transformer.simulation.training_set`). The crystal is read
    only (simulations run on a private copy).

    Parameters
    ----------
    crystal : py4DSTEM Crystal
    accel_voltage : float
        Volts.
    k_max : float
        Reflections with ``|g| <= k_max`` (1/A) are simulated and stored.
    zone_axis_range : 'auto' or (2, 3) / (3, 3) array
        Beam directions to cover. 'auto': the fundamental zone of the crystal's pattern symmetry
        (for m-3m py4DSTEM's [001]-[011]-[111] triangle); an array: spherical-triangle corners in
        the crystal Cartesian frame, as in ``Crystal.orientation_plan`` ([0, 0, 1] prepended to 2 rows).
    angle_step_zone_axis : float
        Grid step in degrees (406 directions for m-3m at 2 deg, the ACOM library's).
    num_zone_axes : int, optional
        Draw this many directions uniformly (solid angle) in the range instead of the grid.
    zone_axes : (Z, 3) array, optional
        Explicit beam directions (crystal Cartesian); overrides the two options above.
    thickness : sequence of float
        Foil thicknesses in A (dynamical); default :data:`DEFAULT_THICKNESS` (80, 10-1000 A).
    num_thicknesses : int, optional
        Per direction, draw this many thicknesses log-uniformly in ``[min, max]`` of ``thickness``.
    dynamical : bool
        Bloch-wave intensities (default) or kinematic ones (thickness ignored, stored as NaN).
    sigma_excitation_error : float, optional
        1/A. Default 0.04 dynamical (selects beams with ``|s_g| <= 3 sigma``), 0.02 kinematic.
    precession_angle_degrees : float, optional
        Kinematic precession.
    min_relative_intensity : float
        Store disks at least this fraction of the pattern's brightest disk.
    tol_structure_factor, thermal_sigma, dynamical_method :
        For ``calculate_dynamical_structure_factors`` (thermal_sigma in A).
    dedup_tolerance : float
        Thicknesses of one direction giving the same disks within this are stored once.
    seed : int
        Seeds the random directions and thicknesses; same seed, same set (any ``n_jobs``).
    n_jobs : int
        Worker processes (-1: all cores).
    progress_bar : bool

    Returns
    -------
    TrainingSet

    Examples
    --------
    >>> from py4dstem_transformer.simulation.simulate import example_crystal, generate_training_set
    >>> ts = generate_training_set(example_crystal("Cu"), angle_step_zone_axis=15,
    ...                            thickness=[50, 200], progress_bar=False)
    >>> qx, qy, intensity = ts.pattern(0)
    >>> float(intensity.max())
    1.0
    """
    start = time.perf_counter()
    _check_arguments(crystal, accel_voltage=accel_voltage, k_max=k_max, num_zone_axes=num_zone_axes,
                     zone_axes=zone_axes, num_thicknesses=num_thicknesses,
                     sigma_excitation_error=sigma_excitation_error, precession_angle_degrees=precession_angle_degrees,
                     min_relative_intensity=min_relative_intensity, tol_structure_factor=tol_structure_factor,
                     thermal_sigma=thermal_sigma, dedup_tolerance=dedup_tolerance, n_jobs=n_jobs)
    rng = np.random.default_rng(seed)
    symmetry = pattern_symmetry(crystal, dynamical)
    directions, range_name = _directions(symmetry, zone_axis_range, angle_step_zone_axis, num_zone_axes,
                                         zone_axes, rng)
    thicknesses = _thicknesses(len(directions), thickness, num_thicknesses, dynamical, rng)
    if sigma_excitation_error is None:
        sigma_excitation_error = SIGMA_DYNAMICAL if dynamical else SIGMA_KINEMATIC
    identity = CrystalIdentity.from_crystal(crystal).filled()  # occupancies always explicit in a training set
    config = TrainingSetConfig(
        **identity.to_dict(), accel_voltage=float(accel_voltage), k_max=float(k_max), dynamical=bool(dynamical),
        thickness=tuple(float(t) for t in thickness) if dynamical else (), num_thicknesses=num_thicknesses,
        zone_axis_range=range_name, angle_step_zone_axis=float(angle_step_zone_axis), num_zone_axes=num_zone_axes,
        sigma_excitation_error=float(sigma_excitation_error), precession_angle_degrees=precession_angle_degrees,
        min_relative_intensity=float(min_relative_intensity), dynamical_method=dynamical_method,
        thermal_sigma=float(thermal_sigma), tol_structure_factor=float(tol_structure_factor),
        dedup_tolerance=float(dedup_tolerance), seed=int(seed), centrosymmetric=symmetry.centrosymmetric,
        symmetry=symmetry.rotations, mirror_operation=symmetry.mirror)
    matrices = zone_axis_matrices(directions)
    tasks = [(i, matrices[i], thicknesses[i]) for i in range(len(directions))]
    n_jobs = (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)
    n_jobs = max(1, min(n_jobs, len(tasks)))
    results = _run_all(config, tasks, n_jobs, progress_bar)
    training_set = _assemble(config, matrices, directions, results, n_jobs, time.perf_counter() - start)
    if len(training_set) == 0:
        dropped = {k: v for k, v in training_set.info.items() if k.startswith("dropped_")}
        raise ValueError(f"no pattern left to train on: {len(directions)} beam direction(s) simulated, dropped "
                         f"{dropped} (a pattern is dropped when no disk lies within k_max = {k_max} 1/A above "
                         "min_relative_intensity, or when its disks lie on one line); use a larger k_max, a smaller "
                         "min_relative_intensity or more zone axes")
    return training_set


def _check_arguments(crystal, **values) -> None:
    """A ValueError naming the argument of :func:`generate_training_set` that cannot give a training set."""
    if not hasattr(crystal, "lat_real"):
        raise TypeError(f"crystal must be a py4DSTEM Crystal, got {type(crystal).__name__}")

    def number(x):
        return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and bool(np.isfinite(x))

    def whole(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    v = values
    rules = [
        ("accel_voltage", number(v["accel_voltage"]) and v["accel_voltage"] > 0, "volts > 0 (e.g. 300e3)"),
        ("k_max", number(v["k_max"]) and v["k_max"] > 0, "a radius > 0 in 1/A (e.g. 2.0)"),
        ("min_relative_intensity", number(v["min_relative_intensity"]) and 0 <= v["min_relative_intensity"] < 1,
         "a fraction in [0, 1)"),
        ("num_zone_axes", v["num_zone_axes"] is None or (whole(v["num_zone_axes"]) and v["num_zone_axes"] >= 1),
         "a whole number of beam directions >= 1 (or None for the angle_step_zone_axis grid)"),
        ("num_thicknesses", v["num_thicknesses"] is None or (whole(v["num_thicknesses"]) and v["num_thicknesses"] >= 1),
         "a whole number >= 1 (or None for every value of thickness)"),
        ("sigma_excitation_error", v["sigma_excitation_error"] is None
         or (number(v["sigma_excitation_error"]) and v["sigma_excitation_error"] > 0), "1/A > 0 (or None)"),
        ("precession_angle_degrees", v["precession_angle_degrees"] is None
         or (number(v["precession_angle_degrees"]) and v["precession_angle_degrees"] >= 0), "degrees >= 0 (or None)"),
        ("tol_structure_factor", number(v["tol_structure_factor"]) and v["tol_structure_factor"] >= 0, "a number >= 0"),
        ("thermal_sigma", number(v["thermal_sigma"]) and v["thermal_sigma"] >= 0, "A >= 0"),
        ("dedup_tolerance", number(v["dedup_tolerance"]) and v["dedup_tolerance"] >= 0, "a number >= 0"),
        ("n_jobs", whole(v["n_jobs"]) and (v["n_jobs"] >= 1 or v["n_jobs"] == -1),
         "a number of worker processes >= 1, or -1 for every core"),
    ]
    for name, ok, what in rules:
        if not ok:
            raise ValueError(f"generate_training_set: {name} = {v[name]!r}; pass {what}")
    if v["zone_axes"] is not None:
        z = np.asarray(v["zone_axes"], dtype=np.float64)
        z = z[None] if z.ndim == 1 else z
        if z.ndim != 2 or z.shape[1] != 3 or len(z) == 0 or not np.isfinite(z).all() or \
                (np.linalg.norm(z, axis=1) == 0).any():
            raise ValueError(f"generate_training_set: zone_axes must be a (Z, 3) array of Z >= 1 finite, non-zero beam "
                             f"directions (crystal Cartesian); got shape {np.shape(v['zone_axes'])}")


def _directions(symmetry, zone_axis_range, angle_step, num_zone_axes, zone_axes, rng):
    if zone_axes is not None:
        v = np.atleast_2d(np.asarray(zone_axes, dtype=np.float64))
        return v / np.linalg.norm(v, axis=1, keepdims=True), "explicit"
    if isinstance(zone_axis_range, str):
        if zone_axis_range != "auto":
            raise ValueError(f"zone_axis_range must be 'auto' or corner directions, not {zone_axis_range!r}")
        zone, name = fundamental_zone(symmetry), "auto"
    else:
        zone = triangle_zone(zone_axis_range)
        name = zone.corners
    if num_zone_axes is not None:
        return zone.sample(int(num_zone_axes), rng), name
    if angle_step <= 0:
        raise ValueError("angle_step_zone_axis must be positive (degrees)")
    return zone.grid(angle_step), name


def _thicknesses(num_directions, thickness, num_thicknesses, dynamical, rng):
    if not dynamical:
        return [np.array([np.nan])] * num_directions
    t = np.asarray(thickness, dtype=np.float64).ravel()
    if t.size == 0 or np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise ValueError("thickness must be a non-empty sequence of positive values (A)")
    if num_thicknesses is None:
        return [t] * num_directions
    lo, hi = np.log(t.min()), np.log(t.max())
    drawn = np.sort(np.exp(rng.uniform(lo, hi, size=(num_directions, int(num_thicknesses)))), axis=1)
    return list(drawn)


def _assemble(config, matrices, directions, results, n_jobs, seconds) -> TrainingSet:
    thickness, counts, qx, qy, intensity = ([r[j] for r in results] for j in range(5))
    per_direction = np.array([len(t) for t in thickness], dtype=np.int64)
    index = np.repeat(np.arange(len(results), dtype=np.int64), per_direction)
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    info = {"num_simulated": int(sum(len(t) for t in thickness) + sum(sum(r[5].values()) for r in results)),
            "n_jobs": int(n_jobs), "seconds": float(seconds)}
    for key in ("empty", "collinear", "duplicate"):
        info[f"dropped_{key}"] = int(sum(r[5][key] for r in results))
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return TrainingSet(config, matrices[index], cat(thickness, np.float64), index, directions, offsets,
                       cat(qx, np.float32), cat(qy, np.float32), cat(intensity, np.float32), info)


def _crystal_generate_training_set(self, **kwargs) -> TrainingSet:
    return generate_training_set(self, **kwargs)


_crystal_generate_training_set.__doc__ = (generate_training_set.__doc__ or "").replace(
    "    crystal : py4DSTEM Crystal\n", "", 1)


def register() -> None:
    """Add ``generate_training_set`` to py4DSTEM's ``Crystal`` (also to instances made earlier)."""
    from py4DSTEM.process.diffraction import Crystal

    Crystal.generate_training_set = _crystal_generate_training_set
