"""Invariants of the rotation vocabulary, float32 and float64, and orix as an independent oracle."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from py4dstem_transformer.core.rotations import (
    beam_flip,
    geodesic_angle,
    random_rotations,
    rotate_polar,
    rotate_xy,
    rotation_about_x,
    rotation_about_z,
    symmetric_orthogonalization,
    symmetry_min_angle,
)
from py4dstem_transformer.core.symmetry import point_group_rotations

from conftest import make_cu

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
seeds = st.integers(0, 2**31 - 1)


def _is_rotation(r, tol):
    eye = torch.eye(3, dtype=r.dtype)
    assert torch.allclose(r.transpose(-1, -2) @ r, eye.expand_as(r), atol=tol)
    assert torch.allclose(torch.linalg.det(r), torch.ones((), dtype=r.dtype), atol=tol)


@pytest.fixture(scope="module")
def oh():
    return point_group_rotations(make_cu())


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_symmetric_orthogonalization_gives_proper_rotations(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 9, generator=g, dtype=torch.float64).to(dtype)
    r = symmetric_orthogonalization(x)
    assert r.shape == (2, 5, 3, 3) and r.dtype == dtype
    _is_rotation(r, 100 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_symmetric_orthogonalization_fixes_rotations_and_is_closest(dtype):
    r = random_rotations(50, seed=1, dtype=dtype)
    assert torch.allclose(symmetric_orthogonalization(r), r, atol=100 * TOL[dtype])
    # a reflection is mapped to a proper rotation, never to a det -1 matrix
    reflected = r * torch.tensor([1.0, 1.0, -1.0], dtype=dtype)
    _is_rotation(symmetric_orthogonalization(reflected), 100 * TOL[dtype])
    # small noise: the projection is closer to the clean rotation than the noise itself
    noisy = r + 0.01 * torch.randn(r.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    assert (geodesic_angle(symmetric_orthogonalization(noisy), r) < 0.03).all()


def test_symmetric_orthogonalization_keeps_half_precision_dtype():
    x = torch.randn(4, 9).to(torch.bfloat16)
    assert symmetric_orthogonalization(x).dtype == torch.bfloat16


def test_symmetric_orthogonalization_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected"):
        symmetric_orthogonalization(torch.zeros(4, 8))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_geodesic_angle_is_a_symmetric_metric(dtype, seed):
    a, b = random_rotations((2, 16), seed=seed, dtype=dtype)
    ab, ba = geodesic_angle(a, b), geodesic_angle(b, a)
    assert torch.allclose(ab, ba, atol=TOL[dtype] * 10)
    # an independent oracle: scipy's angle of a^T b (in [0, pi]) from the same numbers in float64
    d = (a.transpose(-1, -2).double() @ b.double()).numpy()
    oracle = torch.from_numpy(Rotation.from_matrix(d).magnitude())
    assert torch.allclose(ab.double(), oracle, atol=TOL[dtype] * 10, rtol=0)
    assert torch.allclose(geodesic_angle(a, a), torch.zeros(16, dtype=dtype), atol=1e-3 if dtype == torch.float32 else 1e-7)
    # invariant under a common rotation on either side
    c = random_rotations(16, seed=seed + 1, dtype=dtype)
    assert torch.allclose(geodesic_angle(c @ a, c @ b), ab, atol=1e-3 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("angle", [1e-6, 1e-3, 0.5, math.pi - 1e-3, math.pi - 1e-6, math.pi])
def test_geodesic_angle_is_accurate_near_zero_and_pi(dtype, angle):
    # rotation by `angle` about a generic axis, built in float64 then cast
    axis = torch.tensor([0.3, -0.5, 0.81], dtype=torch.float64)
    axis = axis / axis.norm()
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    got = geodesic_angle(torch.eye(3, dtype=dtype), r.to(dtype))
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    assert abs(float(got) - angle) <= tol * max(1.0, angle)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_rotations_seeded_uniform_and_proper(dtype):
    a = random_rotations(4000, seed=7, dtype=dtype)
    assert torch.equal(a, random_rotations(4000, seed=7, dtype=dtype))
    assert not torch.equal(a, random_rotations(4000, seed=8, dtype=dtype))
    _is_rotation(a, 100 * TOL[dtype])
    # Haar measure: E[R] = 0 and the angle density is (1 - cos w) / pi, so E[cos w] = -1/2
    assert a.double().mean(0).abs().max() < 0.05
    angles = geodesic_angle(torch.eye(3, dtype=dtype), a).double()
    assert abs(float(torch.cos(angles).mean()) + 0.5) < 0.03


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=20, deadline=None)
@given(seed=seeds)
def test_symmetry_min_angle_is_invariant_to_symmetry_on_the_left(oh, dtype, seed):
    a, b = random_rotations((2, 8), seed=seed, dtype=dtype)
    s = oh.to(dtype)[torch.randint(0, 24, (8,), generator=torch.Generator().manual_seed(seed))]
    base = symmetry_min_angle(a, b, oh)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.allclose(symmetry_min_angle(a, s @ b, oh), base, atol=tol)
    assert torch.allclose(symmetry_min_angle(s @ a, b, oh), base, atol=tol)
    assert torch.allclose(symmetry_min_angle(b, a, oh), base, atol=tol)
    # cubic disorientations never exceed 62.8 deg
    assert (base <= math.radians(62.81)).all()


def test_symmetry_min_angle_is_not_invariant_on_the_right(oh):
    # the wrong side (M @ S) gives random-orientation-level errors: the convention matters
    m = random_rotations(200, seed=3)
    s = oh[torch.randint(1, 24, (200,), generator=torch.Generator().manual_seed(4))]
    assert torch.median(torch.rad2deg(symmetry_min_angle(m @ s, m, oh))) > 20


def test_beam_flip_option(oh):
    m = random_rotations(100, seed=5)
    flipped = beam_flip(m)
    assert torch.allclose(flipped[:, :, 2], m[:, :, 2])  # same beam direction
    strict = symmetry_min_angle(flipped, m, oh)
    assert (strict > 0.1).float().mean() > 0.9  # the flip is usually a real error...
    assert torch.allclose(symmetry_min_angle(flipped, m, oh, allow_beam_flip=True), torch.zeros(100, dtype=m.dtype), atol=1e-6)


def test_pattern_rotated_by_phi_has_label_m_rz_minus_phi():
    phi = torch.tensor([0.3, -1.2], dtype=torch.float64)
    _is_rotation(rotation_about_z(phi), 1e-12)
    m = random_rotations(2, seed=9)
    g = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # crystal frame
    before = m.transpose(-1, -2) @ g  # g_lab = M.T g_crystal
    after = (m @ rotation_about_z(-phi)).transpose(-1, -2) @ g
    theta0, theta1 = torch.atan2(before[:, 1], before[:, 0]), torch.atan2(after[:, 1], after[:, 0])
    dtheta = torch.remainder(theta1 - theta0 - phi[:, None] + math.pi, 2 * math.pi) - math.pi
    assert dtheta.abs().max() < 1e-12
    assert torch.allclose(after[:, 2], before[:, 2])  # the beam component is untouched


def test_one_in_plane_vocabulary_for_matrices_points_and_polar_angles():
    phi = np.array([0.3, -1.2, 2.9, np.pi])
    rz = rotation_about_z(phi)
    assert isinstance(rz, np.ndarray) and rz.dtype == np.float64
    np.testing.assert_array_equal(rz, rotation_about_z(torch.as_tensor(phi)).numpy())  # one formula, two backends
    np.testing.assert_allclose(rz @ np.swapaxes(rz, -1, -2), np.broadcast_to(np.eye(3), rz.shape), atol=1e-15)
    x, y = np.array([1.0, 0.2, -0.7, 0.5]), np.array([0.0, -0.9, 0.4, 0.5])
    rx, ry = rotate_xy(x, y, phi)
    np.testing.assert_allclose(np.stack([rx, ry], -1), (rz[:, :2, :2] @ np.stack([x, y], -1)[..., None])[..., 0], atol=1e-15)
    theta = rotate_polar(torch.as_tensor(np.arctan2(y, x)), torch.as_tensor(phi)).numpy()
    np.testing.assert_allclose(np.cos(theta - np.arctan2(ry, rx)), 1.0, atol=1e-14)
    assert np.all((theta >= -np.pi) & (theta <= np.pi))
    # per pattern: point p turns by phi[position[p]], exactly as the spread-out angles would
    position = torch.tensor([0, 0, 1, 3])
    tx, ty = rotate_xy(torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(phi), position)
    ex, ey = rotate_xy(x, y, phi[position.numpy()])
    np.testing.assert_allclose(np.stack([tx.numpy(), ty.numpy()]), np.stack([ex, ey]), atol=1e-15)
    # a number gives Python-float arithmetic, so torch tensors keep their dtype
    qx, qy = rotate_xy(torch.ones(3), torch.zeros(3), 0.5)
    assert qx.dtype == torch.float32 and torch.allclose(qy, torch.full((3,), math.sin(0.5)))


def test_rotation_about_x_is_rotation_about_z_with_axes_relabelled():
    phi = np.linspace(-3, 3, 7)
    cycle = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]])  # takes x to y, y to z, z to x
    np.testing.assert_allclose(rotation_about_x(phi), cycle @ rotation_about_z(phi) @ cycle.T, atol=1e-15)


def test_agrees_with_orix_misorientation(oh):
    pytest.importorskip("orix")
    from orix.quaternion import Orientation, symmetry

    a, b = random_rotations((2, 300), seed=11)
    ours = torch.rad2deg(symmetry_min_angle(a, b, oh)).numpy()
    oa = Orientation.from_matrix(a.numpy(), symmetry=symmetry.Oh)
    ob = Orientation.from_matrix(b.numpy(), symmetry=symmetry.Oh)
    theirs = oa.angle_with(ob, degrees=True)
    assert np.abs(ours - theirs).max() < 1e-4
