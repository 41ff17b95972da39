"""Beam-direction sampling and pattern symmetry (zone_axes.py), checked against py4DSTEM."""

import contextlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_cu, make_cu2o, make_mg, make_zns
from py4dstem_transformer.simulation.simulator import PatternSimulator
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.core.zone_axes import (
    fundamental_zone,
    pattern_symmetry,
    point_group_operations,
    triangle_zone,
    zone_axis_matrices,
)


def _random_directions(n, seed):
    v = np.random.default_rng(seed).standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_cu_grid_is_py4dstem_acom_library():
    cu = make_cu()
    with contextlib.redirect_stdout(io.StringIO()):
        cu.orientation_plan(zone_axis_range="auto", calculate_correlation_array=False, progress_bar=False)
    zone = fundamental_zone(pattern_symmetry(make_cu()))
    grid = zone.grid(2.0)
    assert grid.shape == (406, 3)
    np.testing.assert_allclose(grid, cu.orientation_vecs, atol=1e-12)
    np.testing.assert_allclose(zone_axis_matrices(grid), cu.orientation_rotation_matrices, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=3, max_size=3).filter(lambda v: np.linalg.norm(v) > 1e-3))
def test_zone_axis_matrices_are_rotations_with_beam_along_direction(v):
    m = zone_axis_matrices(np.array(v))[0]
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(m) == pytest.approx(1.0)
    np.testing.assert_allclose(m[:, 2], np.array(v) / np.linalg.norm(v), atol=1e-12)


@pytest.mark.parametrize("make, dynamical, n_rot, centro, triangle", [
    (make_cu, True, 24, True, True),
    (make_cu2o, True, 24, True, True),
    (make_zns, True, 12, False, False),   # -43m, Bloch: Friedel's law fails, only the 12 of 23
    (make_zns, False, 24, False, False),  # kinematic: Friedel -> proper part of m-3m
    (make_mg, True, 12, True, True),
])
def test_fundamental_zone_meets_every_orbit_once(make, dynamical, n_rot, centro, triangle):
    sym = pattern_symmetry(make(), dynamical)
    assert (len(sym.rotations), sym.centrosymmetric) == (n_rot, centro)
    zone = fundamental_zone(sym)
    assert (zone.corners is not None) == triangle
    v = _random_directions(300, 1)
    images = np.einsum("hij,nj->nhi", zone.group, v)  # (N, H, 3)
    inside = np.array([zone.contains(x).sum() for x in images])
    assert np.all(inside == 1)  # exactly one symmetry image of a generic direction is in the zone
    assert zone.contains(zone.reduce(v)).all()
    # the grid covers the sphere: every direction is within the step of an image of a grid point
    grid_images = np.einsum("hij,zj->hzi", zone.group, zone.grid(2.0)).reshape(-1, 3)
    nearest = np.degrees(np.arccos(np.clip((v @ grid_images.T).max(1), -1, 1)))
    assert nearest.max() < 2.0


def test_zone_area_matches_group_order():
    # a fundamental zone is 1/|H| of the sphere: count uniform directions falling in it
    for make, dynamical in [(make_cu, True), (make_zns, True), (make_mg, True)]:
        zone = fundamental_zone(pattern_symmetry(make(), dynamical))
        fraction = zone.contains(_random_directions(200_000, 2)).mean()
        assert fraction == pytest.approx(1 / len(zone.group), rel=0.05)


def test_proper_operations_agree_with_symmetry_module():
    for make in (make_cu, make_zns, make_mg):
        crystal = make()
        ops = point_group_operations(crystal)
        proper = ops[np.linalg.det(ops) > 0]
        reference = point_group_rotations(crystal).numpy()
        assert len(proper) == len(reference)
        assert all(np.abs(proper - r).max(axis=(1, 2)).min() < 1e-9 for r in reference)


def _disks(sim, m, t=200.0):
    d = sim.simulate(m, [t])[0]
    return np.stack([d["qx"], d["qy"]], 1), d["intensity"]


def _mirror_error(sim, m, m_mirror):
    """Max intensity difference (relative to the brightest beam) between the mirror image of the
    pattern of ``m`` and the pattern of ``m_mirror``; positions must coincide."""
    (q0, i0), (q1, i1) = _disks(sim, m), _disks(sim, m_mirror)
    q0 = q0 * [-1, 1]
    dist = np.linalg.norm(q0[:, None] - q1[None], axis=2)
    j = dist.argmin(1)
    assert len(q0) == len(q1) and dist[np.arange(len(q0)), j].max() < 1e-10
    return np.abs(i0 - i1[j]).max() / i0.max()


def test_mirror_relation_for_non_centrosymmetric_crystal():
    zns = make_zns()
    dyn = pattern_symmetry(zns, True)
    assert np.linalg.det(dyn.mirror) < 0 and not np.allclose(dyn.mirror, -np.eye(3))
    sim_dyn, sim_kin = PatternSimulator(zns), PatternSimulator(zns, dynamical=False)
    flip = np.diag([1.0, -1.0, -1.0])
    for m in (zone_axis_matrices(_random_directions(3, 5)) @ zone_axis_matrices([[0.2, 0.1, 1.0]])):
        # Bloch: the improper point-group operation gives the mirror image exactly ...
        assert _mirror_error(sim_dyn, m, dyn.mirror @ m @ np.diag([-1.0, 1.0, 1.0])) < 1e-10
        # ... while the centrosymmetric rule M @ diag(1, -1, -1) breaks (Friedel's law fails)
        assert _mirror_error(sim_dyn, m, m @ flip) > 1e-5
        # kinematic patterns obey Friedel's law: the centrosymmetric rule holds
        assert _mirror_error(sim_kin, m, m @ flip) < 1e-12


def test_user_triangle_zone():
    zone = triangle_zone([[0, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(zone.corners[0], [0, 0, 1])
    sample = zone.sample(500, np.random.default_rng(0))
    assert zone.contains(sample, tol=0).all()
    with pytest.raises(ValueError):
        triangle_zone(np.eye(4))
    with pytest.raises(ValueError):
        zone.reduce(sample)
