"""Our OrientationMap is filled exactly as py4DSTEM's ACOM fills it (ACOM as the oracle)."""

import numpy as np
import pytest

from py4dstem_transformer.io.orientation_map import build_orientation_map, ensure_plan, reduce_to_zone_axis_triangle
from py4dstem_transformer.core.rotations import random_rotations
from py4dstem_transformer.core.symmetry import point_group_rotations

from conftest import KinematicSet, kinematic_scan, make_cu


@pytest.fixture(scope="module")
def acom():
    """ACOM on 12 kinematic patterns (~0.5 s)."""
    cu = make_cu()
    cu.setup_diffraction(300e3)
    cu.calculate_structure_factors(2.0)
    cu.orientation_plan(zone_axis_range="auto", progress_bar=False)
    scan = kinematic_scan(KinematicSet(12, seed=5), (3, 4))
    with pytest.warns(UserWarning):  # py4DSTEM: "not elliptically / rotationally calibrated"
        om = cu.match_orientations(scan, progress_bar=False)
    return cu, om


@pytest.mark.slow
def test_acom_matrices_are_already_in_reduced_form(acom):
    cu, om = acom
    m = om.matrix[:, :, 0].reshape(-1, 3, 3)
    reduced, mirror = reduce_to_zone_axis_triangle(m, point_group_rotations(cu).numpy(), cu.orientation_zone_axis_range)
    np.testing.assert_allclose(reduced, m, atol=1e-9)
    assert np.array_equal(mirror, om.mirror[:, :, 0].ravel())


@pytest.mark.slow
def test_every_field_matches_acom(acom):
    cu, om = acom
    ours = build_orientation_map(cu, om.matrix, om.corr, point_group_rotations(cu).numpy())
    np.testing.assert_allclose(ours.matrix, om.matrix, atol=1e-9)
    np.testing.assert_allclose(ours.family, om.family, atol=1e-9)
    assert np.array_equal(ours.mirror, om.mirror)
    assert np.array_equal(ours.inds[..., 0], om.inds[..., 0])
    diff = np.angle(np.exp(1j * (ours.angles - om.angles)))  # angles agree modulo 2 pi
    assert np.abs(diff).max() < 1e-6


def test_reduction_keeps_the_orientation_and_puts_the_beam_in_the_triangle():
    cu = make_cu()
    cu.calculate_structure_factors(2.0)
    ensure_plan(cu, 300e3, 2.0)
    s = point_group_rotations(cu).numpy()
    m = random_rotations(500, seed=2).numpy()
    reduced, mirror = reduce_to_zone_axis_triangle(m, s, cu.orientation_zone_axis_range)
    s_used = np.einsum("nij,nkj->nik", reduced, m)  # reduced = S @ m  =>  S = reduced @ m.T
    assert np.min(np.linalg.norm(s_used[:, None] - s[None], axis=(2, 3)), axis=1).max() < 1e-9
    corners = cu.orientation_zone_axis_range / np.linalg.norm(cu.orientation_zone_axis_range, axis=1, keepdims=True)
    z = np.where(mirror[:, None], -reduced[:, :, 2], reduced[:, :, 2])
    assert (np.linalg.solve(corners.T, z.T) >= -1e-9).all()
    assert 0.3 < mirror.mean() < 0.7


def test_ensure_plan_is_cheap_idempotent_and_keeps_the_voltage():
    cu = make_cu()
    cu.setup_diffraction(200e3)
    ensure_plan(cu, 300e3, 2.0)
    assert float(cu.accel_voltage) == 200e3 and not hasattr(cu, "orientation_ref")
    vecs = cu.orientation_vecs
    ensure_plan(cu, 300e3, 2.0)
    assert cu.orientation_vecs is vecs
    bare = make_cu()  # a crystal without a voltage gets a plan but no voltage: it would be read as the data's
    ensure_plan(bare, 300e3, 2.0)
    assert hasattr(bare, "orientation_vecs") and not hasattr(bare, "accel_voltage") and not hasattr(bare, "wavelength")


@pytest.mark.slow
def test_chunked_assembly_equals_one_pass(acom):
    cu, om = acom
    s = point_group_rotations(cu).numpy()
    whole = build_orientation_map(cu, om.matrix, om.corr, s)
    chunked = build_orientation_map(cu, om.matrix, om.corr, s, chunk=5)
    for field in ("matrix", "family", "corr", "mirror", "angles", "inds"):
        assert np.array_equal(getattr(whole, field), getattr(chunked, field)), field
