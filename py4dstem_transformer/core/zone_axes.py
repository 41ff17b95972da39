"""Beam directions for simulated training sets: pattern symmetry, fundamental zone, sampling.

Frames and conventions (see :mod:`py4dstem_transformer.core.rotations`): directions are unit vectors
in the crystal's Cartesian frame (py4DSTEM's, ``g = hkl @ crystal.lat_inv``); an orientation
matrix ``M`` maps lab to crystal and ``M[:, 2]`` is the beam direction.

Which orientations give the same pattern
----------------------------------------
* A **proper** point-group rotation ``S`` of the crystal: ``S @ M`` gives the same pattern as ``M``
  (kinematic and dynamical).
* **Kinematic** patterns also obey Friedel's law ``|F(g)| = |F(-g)|``, so every crystal behaves
  as if centrosymmetric: the proper part of its Laue group leaves kinematic patterns unchanged.
* **Mirror** ``qx -> -qx``. Mirroring the whole experiment in the lab plane ``x = 0`` is a
  physical symmetry; it turns the crystal into its mirror image, which is the same crystal when
  the point group holds an improper operation ``S`` (det -1). The mirrored pattern is then exactly
  the pattern of ``S @ M @ diag(-1, 1, 1)``. For a centrosymmetric crystal ``S = -1`` gives the
  familiar ``M @ diag(1, -1, -1)``. Checked with Bloch waves to 1e-14 for Cu2O (``S = -1``) and
  GaAs (-43m, ``S`` = a {110} mirror), while ``M @ diag(1, -1, -1)`` is off by up to 4e-3 of the
  brightest beam for GaAs (Friedel's law fails dynamically). Chiral crystals (point groups with
  proper rotations only) have no dynamical mirror; kinematically ``S = -1`` always works.

The beam directions to simulate are a fundamental zone of the *direction group*: the pattern
rotations, times ``{1, -1}`` for centrosymmetric crystals, whose mirror copies (label
``M @ diag(1, -1, -1)``) the training loader supplies. For m-3m (Cu, Cu2O) this is py4DSTEM's
[001]-[011]-[111] triangle. Non-centrosymmetric crystals are sampled over the fundamental zone of
their pattern rotations alone, so a loader that mirrors only centrosymmetric sets (the simple
rule) still sees every orientation; their ``mirror`` operation, when one exists, is an extra
valid augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .rotations import rotation_about_x, rotation_about_z
from .symmetry import _unique, point_group_operations

__all__ = [
    "PatternSymmetry",
    "FundamentalZone",
    "point_group_operations",
    "pattern_symmetry",
    "pattern_symmetry_from_operations",
    "fundamental_zone",
    "triangle_zone",
    "triangle_grid",
    "sphere_grid",
    "zone_axis_matrices",
]

_TOL = 1e-9
# generic "centre" directions: one of them lies on no symmetry element of any crystallographic group
_CENTRES = ((0.1, 0.25, 1.0), (0.17, 0.29, 1.0), (0.31, 0.07, 1.0), (-0.23, 0.13, 1.0))


@dataclass(frozen=True)
class PatternSymmetry:
    """How orientations and patterns of one crystal (and one simulation kind) are related.

    Attributes
    ----------
    rotations : (K, 3, 3) array
        Proper rotations ``S`` (crystal Cartesian) with ``pattern(S @ M) == pattern(M)``,
        identity first. The loss should be minimised over these.
    mirror : (3, 3) array or None
        An improper operation ``S`` with ``mirror(pattern(M)) == pattern(S @ M @ diag(-1, 1, 1))``,
        where ``mirror`` maps ``qx -> -qx``; None when no mirror relation holds.
    centrosymmetric : bool
        The crystal's point group contains the inversion.
    """

    rotations: np.ndarray
    mirror: Optional[np.ndarray]
    centrosymmetric: bool

    @property
    def direction_group(self) -> np.ndarray:
        """(H, 3, 3) operations relating beam directions that need only one simulation: the
        pattern rotations, and their negatives for a centrosymmetric crystal (mirror copies)."""
        if not self.centrosymmetric:
            return self.rotations
        return np.concatenate([self.rotations, -self.rotations])


def pattern_symmetry(crystal, dynamical: bool = True, symprec: float = 1e-3) -> PatternSymmetry:
    """The :class:`PatternSymmetry` of ``crystal`` for dynamical or kinematic patterns."""
    return pattern_symmetry_from_operations(point_group_operations(crystal, symprec), dynamical)


def pattern_symmetry_from_operations(ops: np.ndarray, dynamical: bool = True) -> PatternSymmetry:
    """The :class:`PatternSymmetry` of a point group given as its (K, 3, 3) operations (proper and improper,
    crystal Cartesian frame, identity first), for dynamical or kinematic patterns."""
    ops = np.asarray(ops, dtype=np.float64)
    inversion = -np.eye(3)
    centro = bool(np.any(np.all(np.abs(ops - inversion) < 1e-8, axis=(1, 2))))
    if not dynamical:  # Friedel's law: the Laue group acts on kinematic patterns
        ops = _unique(np.concatenate([ops, -ops]))
    det = np.linalg.det(ops)
    proper, improper = ops[det > 0], ops[det < 0]
    if centro or not dynamical:
        mirror = inversion
    else:
        mirror = improper[0] if len(improper) else None
    return PatternSymmetry(proper, mirror, centro)


@dataclass(frozen=True)
class FundamentalZone:
    """A region of beam directions that meets every orbit of a direction group once.

    Either a spherical triangle (``corners``) or, for groups whose fundamental zone is not a
    triangle, the Dirichlet cell of ``centre``: the directions closer to ``centre`` than to any of
    its images under ``group``.

    Attributes
    ----------
    corners : (3, 3) array or None
        Unit corner directions (rows), the first one being where the grid starts.
    group : (H, 3, 3) array or None
        The direction group (None for a user-given triangle).
    centre : (3,) array
        A unit direction inside the zone.
    """

    corners: Optional[np.ndarray]
    group: Optional[np.ndarray]
    centre: np.ndarray

    def contains(self, v: np.ndarray, tol: float = _TOL) -> np.ndarray:
        """(N,) bool: which directions ``v`` (N, 3) lie in the zone (boundary included)."""
        v = np.atleast_2d(v)
        if self.group is None:
            normals = _triangle_normals(self.corners)
            return np.all(v @ normals.T >= -tol, axis=1)
        images = np.einsum("hij,nj->nhi", self.group, v) @ self.centre  # (N, H) = c . (h v)
        return v @ self.centre >= images.max(axis=1) - tol

    def reduce(self, v: np.ndarray) -> np.ndarray:
        """Map directions (N, 3) into the zone with the group operation that brings them closest
        to the centre (the Dirichlet cell of the centre; it equals the triangle when there is one).
        """
        if self.group is None:
            raise ValueError("a user-given zone_axis_range has no symmetry group to reduce with")
        v = np.atleast_2d(v)
        images = np.einsum("hij,nj->nhi", self.group, v)  # (N, H, 3)
        best = np.argmax(images @ self.centre, axis=1)
        return images[np.arange(len(v)), best]

    def grid(self, angle_step_deg: float) -> np.ndarray:
        """(Z, 3) beam directions spaced about ``angle_step_deg`` apart, covering the zone."""
        if self.corners is not None:
            return triangle_grid(self.corners, angle_step_deg)
        points = sphere_grid(angle_step_deg)
        return points[self.contains(points, tol=1e-9)]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) directions drawn uniformly (solid angle) in the zone."""
        if self.group is not None:
            return self.reduce(_uniform_directions(n, rng))
        out, total = [], 0
        for _ in range(10000):  # rejection from the sphere: the zone is at least 1/48 of it here
            v = _uniform_directions(max(64, 4 * n), rng)
            v = v[self.contains(v, tol=0.0)]
            out.append(v)
            total += len(v)
            if total >= n:
                return np.concatenate(out)[:n]
        raise ValueError("zone_axis_range is too small to sample from")


def _uniform_directions(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _triangle_normals(corners: np.ndarray) -> np.ndarray:
    """Inward normals (3, 3) of the great circles bounding a spherical triangle."""
    a, b, c = corners
    normals = np.stack([np.cross(a, b), np.cross(b, c), np.cross(c, a)])
    normals *= np.sign(normals @ (a + b + c))[:, None]
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def triangle_zone(zone_axis_range) -> FundamentalZone:
    """A user-given spherical triangle, py4DSTEM's ``zone_axis_range`` convention.

    ``zone_axis_range`` is (3, 3) corner directions, or (2, 3) with ``[0, 0, 1]`` prepended, in
    the crystal Cartesian frame (as ``orientation_plan`` uses them).
    """
    corners = np.asarray(zone_axis_range, dtype=np.float64)
    if corners.shape == (2, 3):
        corners = np.vstack([[0.0, 0.0, 1.0], corners])
    if corners.shape != (3, 3):
        raise ValueError(f"zone_axis_range must be 'auto', (2, 3) or (3, 3); got shape {corners.shape}")
    corners = corners / np.linalg.norm(corners, axis=1, keepdims=True)
    centre = corners.sum(0) / np.linalg.norm(corners.sum(0))
    return FundamentalZone(corners, None, centre)


def fundamental_zone(symmetry: PatternSymmetry) -> FundamentalZone:
    """The fundamental zone of beam directions for ``symmetry.direction_group``.

    When the direction group is generated by mirror planes that cut the sphere into
    spherical triangles of the right area (m-3m, -43m, 4/mmm, 6/mmm, mmm, ... with the mirror),
    the zone is the triangle holding a fixed generic direction near [001], started at its corner
    closest to [001] (for m-3m this reproduces py4DSTEM's [001]-[011]-[111] plan). Otherwise it is
    the Dirichlet cell of that direction.
    """
    group = symmetry.direction_group
    centre = _generic_centre(group)
    corners = _mirror_chamber(group, centre)
    if corners is not None:
        centre = corners.sum(0) / np.linalg.norm(corners.sum(0))
    return FundamentalZone(corners, group, centre)


def _generic_centre(group: np.ndarray) -> np.ndarray:
    for c in _CENTRES:
        c = np.asarray(c) / np.linalg.norm(c)
        moved = np.linalg.norm(group @ c - c, axis=1)
        if np.sum(moved < 1e-3) == 1:  # only the identity fixes it
            return c
    raise ValueError("could not find a direction in general position for this group")


def _mirror_chamber(group: np.ndarray, centre: np.ndarray) -> Optional[np.ndarray]:
    """Corners of the triangle cut out by the group's mirror planes around ``centre``, if that
    triangle is a fundamental zone (its area is 4 pi / |group|); None otherwise."""
    mirrors = [h for h in group if np.linalg.det(h) < 0 and abs(np.trace(h) - 1) < 1e-8]
    if len(mirrors) < 3:
        return None
    normals = np.array([np.linalg.svd(np.eye(3) - h)[2][0] for h in mirrors])  # (I - h) = 2 n n^T
    normals *= np.sign(normals @ centre)[:, None]
    vertices = []
    for i in range(len(normals)):
        for j in range(i + 1, len(normals)):
            u = np.cross(normals[i], normals[j])
            if np.linalg.norm(u) < 1e-8:
                continue
            for s in (1.0, -1.0):
                w = s * u / np.linalg.norm(u)
                if np.all(normals @ w >= -1e-9) and not any(np.allclose(w, x, atol=1e-8) for x in vertices):
                    vertices.append(w)
    if len(vertices) != 3:
        return None
    corners = np.array(vertices)
    if abs(_spherical_area(corners) - 4 * np.pi / len(group)) > 1e-6:
        return None
    first = np.lexsort((-_corner_angles(corners), np.round(corners[:, 2], 9)))[-1]  # max z, sharpest
    rest = [k for k in range(3) if k != first]
    rest.sort(key=lambda k: float(corners[first] @ corners[k]), reverse=True)  # nearest next
    return corners[[first] + rest]


def _corner_angles(corners: np.ndarray) -> np.ndarray:
    angles = []
    for k in range(3):
        a, b, c = corners[k], corners[(k + 1) % 3], corners[(k + 2) % 3]
        tb, tc = b - (a @ b) * a, c - (a @ c) * a
        angles.append(np.arccos(np.clip(tb @ tc / np.linalg.norm(tb) / np.linalg.norm(tc), -1, 1)))
    return np.array(angles)


def _spherical_area(corners: np.ndarray) -> float:
    return float(_corner_angles(corners).sum() - np.pi)


def _slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points (len(t), 3) on the great-circle arc from unit ``a`` to unit ``b``."""
    angle = np.arccos(np.clip(a @ b, -1.0, 1.0))
    if angle < 1e-12:
        return np.repeat(a[None], len(t), axis=0)
    t = np.asarray(t, dtype=np.float64)[:, None]
    return (np.sin((1 - t) * angle) * a + np.sin(t * angle) * b) / np.sin(angle)


def triangle_grid(corners: np.ndarray, angle_step_deg: float) -> np.ndarray:
    """Beam directions filling a spherical triangle, built as py4DSTEM's ``orientation_plan`` does.

    With ``n = round(max(angle(u, v), angle(u, w)) / step)`` steps from the first corner ``u``,
    row ``a`` (0..n) holds ``a + 1`` points spaced along the arc between the points ``a / n`` of
    the way along u->v and u->w: ``(n + 1)(n + 2) / 2`` directions (406 for m-3m at 2 deg).

    Returns
    -------
    (Z, 3) unit vectors, crystal Cartesian frame.
    """
    u, v, w = np.asarray(corners, dtype=np.float64)
    step = np.deg2rad(angle_step_deg)
    n = int(np.round(max(np.arccos(np.clip(u @ v, -1, 1)), np.arccos(np.clip(u @ w, -1, 1))) / step))
    n = max(n, 1)
    along_v, along_w = _slerp(u, v, np.linspace(0, 1, n + 1)), _slerp(u, w, np.linspace(0, 1, n + 1))
    rows = [u[None]] + [_slerp(along_v[a], along_w[a], np.linspace(0, 1, a + 1)) for a in range(1, n + 1)]
    return np.concatenate(rows)


def sphere_grid(angle_step_deg: float) -> np.ndarray:
    """Quasi-uniform directions on the whole sphere (Fibonacci spiral) at the point density of
    :func:`triangle_grid` for the same step (about 406 points per 1/48 of the sphere at 2 deg)."""
    step = np.deg2rad(angle_step_deg)
    n = int(np.ceil(4 * np.pi / (0.529 * step**2)))
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def zone_axis_matrices(directions: np.ndarray) -> np.ndarray:
    """Orientation matrices with beam direction ``directions`` and in-plane angle 0.

    py4DSTEM's construction (``orientation_plan``): with elevation ``e = atan2(hypot(vx, vy), vz)``
    and azimuth ``a = atan2(vx, vy)``, ``M = Rz(a) @ Rx(e) @ Rz(-a)`` with the passive forms
    ``Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and ``Rx(t) = [[1, 0, 0], [0, c, s], [0, -s, c]]``
    (the transposes of :func:`.rotations.rotation_about_z` and :func:`.rotations.rotation_about_x`).

    Parameters
    ----------
    directions : (Z, 3) array, crystal Cartesian (need not be normalised).

    Returns
    -------
    (Z, 3, 3) float64 proper rotations (lab -> crystal) with ``M[:, :, 2]`` the unit directions.
    """
    v = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    elev = np.arctan2(np.hypot(v[:, 0], v[:, 1]), v[:, 2])
    azim = np.arctan2(v[:, 0], v[:, 1])
    passive = lambda m: np.ascontiguousarray(np.swapaxes(m, -1, -2))  # noqa: E731
    return passive(rotation_about_z(azim)) @ passive(rotation_about_x(elev)) @ passive(rotation_about_z(-azim))
