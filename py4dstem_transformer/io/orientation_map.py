"""Orientation matrices -> py4DSTEM's native ``OrientationMap``, filled as ACOM fills it, vectorized.

For every match the matrix is replaced by the symmetry-equivalent ``S @ M`` whose beam direction
lies in the plan's zone-axis triangle (``mirror=False``) or whose negative does (``mirror=True``),
exactly the form ``match_orientations`` returns. ``family``, ``angles`` and ``inds`` follow from it:

* ``family``: each column of ``M`` symmetry-reduced into the triangle (py4DSTEM's
  ``symmetry_reduce_directions``), needs the plan's ``symmetry_operators`` (pymatgen);
* ``angles``: ``[a0, a1, a2]`` with ``M = Rotation.from_euler("ZXZ", [a2, a1, a0]).as_matrix().T``
  (times ``diag(1, -1, -1)`` when mirrored), the relation ACOM's output satisfies;
* ``inds``: the nearest zone axis of the plan (``crystal.orientation_vecs``) and in-plane step.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

from ..core.rotations import MIRROR

__all__ = ["ensure_plan", "build_orientation_map", "reduce_to_zone_axis_triangle"]

_PLAN = ("orientation_vecs", "orientation_zone_axis_range", "orientation_inds", "orientation_num_zones",
         "orientation_zone_axis_steps", "orientation_rotation_matrices", "orientation_gamma")


def ensure_plan(crystal, accel_voltage: float, k_max: float) -> None:
    """Give ``crystal`` the plan attributes py4DSTEM's orientation plots read (once; ~20 ms).

    Runs ``crystal.orientation_plan(calculate_correlation_array=False)`` only if no plan exists,
    with the crystal's own ``accel_voltage`` when it has one (``orientation_plan`` would otherwise
    reset it to 300 kV). A crystal that had no voltage gets none: the voltage ``orientation_plan``
    sets is taken off again, so that the crystal never claims a voltage its user did not give it
    (the mapper reads ``crystal.accel_voltage`` as the data's). Structure factors are computed first
    only if the crystal has none.
    """
    if all(hasattr(crystal, a) for a in _PLAN):
        return
    had_voltage = getattr(crystal, "accel_voltage", None) is not None
    missing = [name for name in ("accel_voltage", "wavelength") if not hasattr(crystal, name)]
    voltage = float(crystal.accel_voltage) if had_voltage else float(accel_voltage)
    with contextlib.redirect_stdout(io.StringIO()):
        if not hasattr(crystal, "struct_factors"):
            crystal.calculate_structure_factors(k_max)
        zone_axis_range = "auto" if getattr(crystal, "pymatgen_available", False) else np.array([[0, 1, 1], [1, 1, 1]])
        crystal.orientation_plan(zone_axis_range=zone_axis_range, accel_voltage=voltage,
                                 calculate_correlation_array=False, progress_bar=False)
    for name in missing:
        if hasattr(crystal, name):
            delattr(crystal, name)


def reduce_to_zone_axis_triangle(matrix: np.ndarray, rotations: np.ndarray, zone_axis_range: np.ndarray):
    """ACOM's form of each orientation: ``(S @ M, mirror)``.

    Parameters
    ----------
    matrix : (..., 3, 3) orientation matrices.
    rotations : (K, 3, 3) proper point-group rotations (crystal Cartesian frame).
    zone_axis_range : (3, 3) rows = corners of the plan's zone-axis triangle.

    Returns
    -------
    reduced : (..., 3, 3) with ``reduced[..., :, 2]`` (or its negative, where ``mirror``) inside the
        triangle; orientations no rotation brings there are returned unchanged.
    mirror : (...) bool.
    """
    shape = matrix.shape[:-2]
    m = matrix.reshape(-1, 3, 3)
    corners = zone_axis_range / np.linalg.norm(zone_axis_range, axis=1, keepdims=True)
    to_weights = np.linalg.inv(corners.T)  # v = corners.T @ w; inside iff w >= 0
    z = np.tensordot(m[:, :, 2], rotations, axes=([1], [2]))  # (n, K, 3): beam direction after each S
    w = z @ to_weights.T
    tol = -1e-9
    inside, inside_neg = _smallest(w) >= tol, _smallest(-w) >= tol  # (n, K)
    use_neg = ~inside.any(1) & inside_neg.any(1)
    found = inside.any(1) | use_neg
    pick = np.where(use_neg, inside_neg.argmax(1), inside.argmax(1))
    pick = np.where(found, pick, 0)  # rotations[0] is the identity
    reduced = np.matmul(rotations[pick], m)
    return reduced.reshape(matrix.shape), use_neg.reshape(shape)


def _smallest(w: np.ndarray) -> np.ndarray:
    """(..., 3) -> (...) smallest component (three elementwise minima: faster than a reduction over 3)."""
    return np.minimum(np.minimum(w[..., 0], w[..., 1]), w[..., 2])


def _family(crystal, m: np.ndarray) -> np.ndarray:
    """Vectorized ``crystal.symmetry_reduce_directions``: each column reduced into the triangle."""
    reduction = np.asarray(crystal.symmetry_reduction)  # (S, 3, 3)
    operators = np.asarray(crystal.symmetry_operators)
    fam = np.zeros_like(m)
    for axis in range(3):
        v = m[:, :, axis]  # (n, 3)
        weights = np.tensordot(v, reduction, axes=([1], [1]))  # (n, S, 3): v @ reduction[s], one GEMM
        first = np.argmax(_smallest(weights) >= 0, axis=1)  # the first operator that brings v into the triangle
        fam[:, :, axis] = np.matmul(operators[first], v[:, :, None])[:, :, 0]
    return fam


def _angles(m: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    base = np.where(mirror[:, None, None], m * np.array(MIRROR)[None, None, :], m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gimbal lock at exact zone axes is harmless here
        euler = Rotation.from_matrix(np.transpose(base, (0, 2, 1))).as_euler("ZXZ")
    return euler[:, ::-1].copy()


def _inds(crystal, m: np.ndarray, mirror: np.ndarray, angles: np.ndarray) -> np.ndarray:
    z = np.where(mirror[:, None], -m[:, :, 2], m[:, :, 2])
    zone = np.argmax(z @ np.asarray(crystal.orientation_vecs).T, axis=1)
    gamma = np.asarray(crystal.orientation_gamma)
    step = gamma[1] - gamma[0] if len(gamma) > 1 else 2 * np.pi
    in_plane = angles[:, 2] + angles[:, 0] - np.where(mirror, np.pi, 0.0)  # angles[2] = -azim + phi (+pi)
    steps = np.round(np.mod(in_plane, 2 * np.pi) / step).astype(int) % max(len(gamma), 1)
    return np.stack([zone, steps], 1)


def build_orientation_map(crystal, matrix: np.ndarray, corr: np.ndarray, rotations: np.ndarray, chunk: int = 65536):
    """A py4DSTEM ``OrientationMap`` from (Rx, Ry, K, 3, 3) matrices and (Rx, Ry, K) scores.

    Positions with ``corr == 0`` are "no match" and get ``crystal.orientation_rotation_matrices[0]``
    as ACOM gives them. ``crystal`` must carry a plan (:func:`ensure_plan`). Work is done in chunks
    of ``chunk`` matches, so temporaries stay small on 1024 x 1024 scans.
    """
    from py4DSTEM.process.diffraction.utils import OrientationMap

    Rx, Ry, K = corr.shape
    om = OrientationMap(num_x=Rx, num_y=Ry, num_matches=K)
    m_all = np.asarray(matrix, dtype=np.float64).reshape(-1, 3, 3)
    corr_all = np.asarray(corr).reshape(-1)
    fields = {name: getattr(om, name).reshape((-1,) + getattr(om, name).shape[3:])
              for name in ("matrix", "family", "mirror", "angles", "inds")}  # views into om's arrays
    for start in range(0, len(corr_all), chunk):
        part = slice(start, start + chunk)
        _fill(crystal, m_all[part], corr_all[part], rotations, {k: v[part] for k, v in fields.items()})
    om.corr[:] = corr
    return om


def _fill(crystal, m: np.ndarray, corr: np.ndarray, rotations: np.ndarray, out: dict) -> None:
    """Reduced matrices, mirror flags, angles, inds and family of (n, 3, 3) matches, into ``out``."""
    m = m.copy()
    unmatched = corr <= 0
    m[unmatched] = np.asarray(crystal.orientation_rotation_matrices)[0]
    m, mirror = reduce_to_zone_axis_triangle(m, rotations, np.asarray(crystal.orientation_zone_axis_range))
    mirror &= ~unmatched
    angles = _angles(m, mirror)
    out["matrix"][:], out["mirror"][:], out["angles"][:] = m, mirror, angles
    out["inds"][:] = _inds(crystal, m, mirror, angles)
    if hasattr(crystal, "symmetry_reduction"):
        out["family"][:] = _family(crystal, m)
