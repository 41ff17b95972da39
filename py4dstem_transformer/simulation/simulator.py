"""One crystal's py4DSTEM simulations, prepared once on a private copy: :class:`PatternSimulator`.

The user's ``Crystal`` is never changed: ``calculate_dynamical_structure_factors`` would overwrite
its kinematic structure factors and ``orientation_plan`` resets its voltage, so everything runs on a
private copy rebuilt from its identity (:func:`~py4dstem_transformer.core.crystal.private_copy`).

Recipe (dynamical): ``calculate_dynamical_structure_factors(accel_voltage, 'WK-CP', k_max=2 k_max,
thermal_sigma=0.08, tol_structure_factor=1e-4)`` so every pair of beams couples and the forbidden
reflections (which py4DSTEM keeps as uncoupled beams with the default tolerance 0) are dropped;
then ``calculate_structure_factors(k_max)`` for the kinematic factors that select the beams. For an
orientation ``M``: beams = ``generate_diffraction_pattern(orientation_matrix=M, tol_intensity=0,
k_max=k_max, sigma_excitation_error=0.04)``, then ``generate_dynamical_diffraction_pattern(beams,
thickness_list, zone_axis_cartesian=M[:, 2])``: one eigen-decomposition for all thicknesses.
"""

from __future__ import annotations

import contextlib
import io
from typing import Optional, Sequence

import numpy as np

from ..core.defaults import ACCEL_VOLTAGE, K_MAX
from ..core.crystal import private_copy

__all__ = ["DEFAULT_THICKNESS", "PatternSimulator", "private_crystal", "example_crystal", "direct_beam",
           "training_disks", "is_collinear", "single_blas_thread"]

#: 80 thicknesses log-spaced over 10-1000 A (1-100 nm, thin to thick foils). Normalised Bloch
#: patterns change fastest with thickness in thin foils (max relative-intensity change about
#: 0.08 per A at 10 A against about 0.01 per A beyond 100 A, Cu 300 kV), hence the log spacing.
DEFAULT_THICKNESS = tuple(np.geomspace(10.0, 1000.0, 80).tolist())
#: Default sigma_excitation_error (1/A): dynamical = beam selection |s_g| <= 3 sigma (the paper's
#: 0.04); kinematic = envelope width of py4DSTEM's orientation_plan (0.02).
SIGMA_DYNAMICAL, SIGMA_KINEMATIC = 0.04, 0.02
_COLLINEAR_SIN = 1e-6
_CONTROLLER = []


def single_blas_thread():
    """Context: one BLAS thread. The Bloch eigenproblems are small (tens to hundreds of beams);
    several threads only contend, and on a busy machine they were up to 50x slower."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (py4DSTEM)
        return contextlib.nullcontext()
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


#: The former name of :func:`~py4dstem_transformer.core.crystal.private_copy`.
private_crystal = private_copy


def example_crystal(name: str):
    """``'Cu'`` (fcc, a = 3.615 A) or ``'Cu2O'`` (cuprite, Pn-3m origin 2, a = 4.2696 A)."""
    from py4DSTEM.process.diffraction import Crystal

    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    key = name.lower()
    if key == "cu":
        return Crystal(np.array(fcc, dtype=np.float64), 29, 3.615)
    if key == "cu2o":
        return Crystal(np.array(fcc + [[0.25, 0.25, 0.25], [0.75, 0.75, 0.75]]), [29] * 4 + [8] * 2, 4.2696)
    raise ValueError(f"unknown example crystal {name!r}; use 'Cu' or 'Cu2O'")


class PatternSimulator:
    """py4DSTEM simulations of one crystal, prepared once on a private copy.

    Parameters
    ----------
    crystal : py4DSTEM Crystal
        Read only.
    accel_voltage : float
        Volts.
    k_max : float
        Simulate reflections with 3-D ``|g| <= k_max`` (1/A).
    dynamical : bool
        Bloch waves (``calculate_dynamical_structure_factors`` to ``2 k_max`` so every pair of beams
        couples, then the kinematic factors are recomputed to ``k_max`` for beam selection).
    sigma_excitation_error, tol_excitation_error_mult, precession_angle_degrees :
        As in ``Crystal.generate_diffraction_pattern`` (precession: kinematic only).
    dynamical_method, thermal_sigma, tol_structure_factor :
        As in ``Crystal.calculate_dynamical_structure_factors``.
    """

    def __init__(self, crystal, accel_voltage=ACCEL_VOLTAGE, k_max=K_MAX, dynamical=True, sigma_excitation_error=None,
                 tol_excitation_error_mult=3.0, precession_angle_degrees=None, dynamical_method="WK-CP",
                 thermal_sigma=0.08, tol_structure_factor=1e-4):
        if dynamical and precession_angle_degrees is not None:
            raise ValueError("precession_angle_degrees is only supported for kinematic simulations")
        if sigma_excitation_error is None:
            sigma_excitation_error = SIGMA_DYNAMICAL if dynamical else SIGMA_KINEMATIC
        self.k_max, self.dynamical = float(k_max), bool(dynamical)
        self.sigma, self.mult = float(sigma_excitation_error), float(tol_excitation_error_mult)
        self.precession = precession_angle_degrees
        self.crystal = private_copy(crystal)
        with contextlib.redirect_stdout(io.StringIO()):  # py4DSTEM prints "overriding ..." notes
            if dynamical:
                self.crystal.calculate_dynamical_structure_factors(
                    accel_voltage, dynamical_method, k_max=2 * self.k_max, thermal_sigma=thermal_sigma,
                    tol_structure_factor=tol_structure_factor, recompute_kinematic_structure_factors=False)
            self.crystal.setup_diffraction(accel_voltage)
            self.crystal.calculate_structure_factors(self.k_max)

    @classmethod
    def from_config(cls, config) -> "PatternSimulator":
        """From a :class:`~py4dstem_transformer.simulation.training_set.TrainingSetConfig`."""
        return cls(config.crystal_identity.to_crystal(), config.accel_voltage, config.k_max, config.dynamical,
                   config.sigma_excitation_error, config.tol_excitation_error_mult, config.precession_angle_degrees,
                   config.dynamical_method, config.thermal_sigma, config.tol_structure_factor)

    def simulate(self, matrix: np.ndarray, thickness: Optional[Sequence[float]] = None) -> list:
        """Patterns for orientation ``matrix`` (3, 3), one per thickness (A; ignored if kinematic).

        Returns
        -------
        list of structured arrays with fields ``qx, qy`` (1/A, lab), ``intensity``, ``h, k, l``,
        the 000 beam included (kinematic: one array).
        """
        beams = self.crystal.generate_diffraction_pattern(
            orientation_matrix=matrix, sigma_excitation_error=self.sigma, tol_excitation_error_mult=self.mult,
            tol_intensity=0.0, k_max=self.k_max, precession_angle_degrees=self.precession)
        if not self.dynamical:
            return [beams.data]
        thickness = np.atleast_1d(np.asarray(thickness, dtype=np.float64))
        with single_blas_thread():
            patterns = self.crystal.generate_dynamical_diffraction_pattern(
                beams, thickness, zone_axis_cartesian=matrix[:, 2], always_return_list=True)
        return [p.data for p in patterns]


def direct_beam(data: np.ndarray) -> np.ndarray:
    """(n,) bool: the 000 beam of a py4DSTEM pattern (structured array with fields ``h, k, l``)."""
    return (data["h"] == 0) & (data["k"] == 0) & (data["l"] == 0)


def training_disks(data: np.ndarray, k_max: float, min_relative_intensity: float):
    """Direct beam out, ``hypot(qx, qy) <= k_max``, intensities over the brightest disk, faint ones out.

    Returns ``(qx, qy, relative_intensity, hkl)`` arrays, or None if no disk is left.
    """
    keep = ~direct_beam(data) & (np.hypot(data["qx"], data["qy"]) <= k_max)
    if not np.any(keep) or data["intensity"][keep].max() <= 0:
        return None
    d = data[keep]
    relative = d["intensity"] / d["intensity"].max()
    bright = relative >= min_relative_intensity
    hkl = np.stack([d["h"], d["k"], d["l"]], axis=1)[bright]
    return d["qx"][bright], d["qy"][bright], relative[bright], hkl


def is_collinear(qx: np.ndarray, qy: np.ndarray) -> bool:
    """True if every disk lies on one line through the origin (or there is at most one disk)."""
    r = np.hypot(qx, qy)
    k = int(np.argmax(r))
    sin = np.abs(qx * qy[k] - qy * qx[k]) / np.maximum(r * r[k], 1e-300)
    return bool(np.all(sin <= _COLLINEAR_SIN))
