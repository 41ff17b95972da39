"""TrainingSet container: save/load round trip (up to ten million disks), augmentation identities."""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_cu, make_zns
from py4dstem_transformer.simulation.simulate import generate_training_set
from py4dstem_transformer.simulation.training_set import (
    TrainingSet,
    TrainingSetConfig,
    in_plane_rotation,
    mirror_orientation,
    rotate_pattern,
)

ARRAYS = ("qx", "qy", "intensity", "offsets", "orientation_matrices", "thickness", "zone_axis_index", "zone_axes")


@pytest.fixture(scope="module")
def small_set():
    return generate_training_set(make_cu(), angle_step_zone_axis=12, thickness=[30.0, 250.0], progress_bar=False)


def assert_identical(a, b):
    for key in ARRAYS:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert a.config == b.config


@pytest.mark.parametrize("kwargs", [
    dict(angle_step_zone_axis=12, thickness=[30.0, 250.0]),
    dict(num_zone_axes=5, dynamical=False, precession_angle_degrees=0.5, zone_axis_range=[[0, 1, 1], [1, 1, 1]]),
])
def test_save_load_round_trip_is_exact(tmp_path, kwargs):
    ts = generate_training_set(make_cu(), progress_bar=False, **kwargs)
    ts.save(tmp_path / "set.h5")
    back = TrainingSet.load(tmp_path / "set.h5")
    assert_identical(ts, back)
    assert back.info["num_simulated"] == ts.info["num_simulated"]
    assert isinstance(back.config.zone_axis_range, type(ts.config.zone_axis_range))
    assert back.config.version == ts.config.version and back.config.k_max == 2.1


def test_config_round_trip_keeps_none_and_non_centrosymmetric_fields(tmp_path):
    ts = generate_training_set(make_zns(), angle_step_zone_axis=20, thickness=[100.0], progress_bar=False)
    ts.save(tmp_path / "zns.h5")
    back = TrainingSet.load(tmp_path / "zns.h5")
    assert back.config == ts.config and back.config.num_zone_axes is None
    assert back.config.centrosymmetric is False and np.array(back.config.mirror_operation).shape == (3, 3)
    assert hash(back.config) == hash(ts.config)


def test_save_refuses_to_overwrite_and_load_rejects_other_files(tmp_path, small_set):
    import emdfile

    path = tmp_path / "set.h5"
    small_set.save(path)
    with pytest.raises(FileExistsError):
        small_set.save(path)
    small_set.save(path, overwrite=True)
    emdfile.save(str(tmp_path / "other.h5"), np.zeros(3), mode="o")
    with pytest.raises(ValueError):
        TrainingSet.load(tmp_path / "other.h5")


@pytest.mark.slow
def test_ten_million_disks_round_trip(tmp_path):
    # correctness only; the load speed (M disks/s) is reported by benchmarks/simulation.py
    rng = np.random.default_rng(0)
    n_disks, n = 10_000_000, 400_000
    offsets = np.concatenate([[0], np.sort(rng.choice(np.arange(1, n_disks), n - 1, replace=False)), [n_disks]])
    config = TrainingSetConfig(lat_real=np.eye(3) * 3.615, positions=[[0, 0, 0]], numbers=[29], occupancy=[1.0])
    ts = TrainingSet(config, np.broadcast_to(np.eye(3), (n, 3, 3)), np.full(n, 100.0), np.arange(n) % 400,
                     np.tile([[0.0, 0.0, 1.0]], (400, 1)), offsets, *rng.random((3, n_disks), dtype=np.float32))
    ts.save(tmp_path / "big.h5")
    back = TrainingSet.load(tmp_path / "big.h5")
    assert len(back.qx) == n_disks and np.array_equal(back.offsets, offsets)


def test_pattern_and_orientation_accessors(small_set):
    ts = small_set
    i = len(ts) // 2
    qx, qy, inten = ts.pattern(i)
    a, b = ts.offsets[i], ts.offsets[i + 1]
    np.testing.assert_array_equal(qx, ts.qx[a:b])
    assert inten.max() == 1.0 and len(qx) == ts.counts[i]
    # rotating by phi then mirroring equals the accessor with both
    phi = 0.7
    rx, ry = rotate_pattern(ts.qx[a:b], ts.qy[a:b], phi)
    mx, my, _ = ts.pattern(i, angle=phi, mirror=True)
    np.testing.assert_allclose((mx, my), (-rx, ry), atol=1e-12)
    m = ts.orientation(i, angle=phi, mirror=True)
    expected = ts.orientation_matrices[i] @ in_plane_rotation(phi) @ np.diag([1.0, -1.0, -1.0])  # centrosymmetric
    np.testing.assert_allclose(m, expected, atol=1e-12)
    assert "dynamical" in repr(ts)


def test_rebuilt_crystal_has_the_same_identity(small_set):
    crystal, cu = small_set.crystal(), make_cu()
    np.testing.assert_array_equal(crystal.lat_real, cu.lat_real)
    np.testing.assert_array_equal(crystal.positions, cu.positions)
    np.testing.assert_array_equal(crystal.numbers, cu.numbers)


@settings(max_examples=40, deadline=None)
@given(st.floats(-10, 10), st.floats(-10, 10))
def test_in_plane_rotations_compose_and_match_pattern_rotation(a, b):
    np.testing.assert_allclose(in_plane_rotation(a) @ in_plane_rotation(b), in_plane_rotation(a + b), atol=1e-12)
    # the label rotation moves the lab-frame projection of any crystal vector like rotate_pattern
    g = np.array([0.3, -0.7, 0.2])
    m = in_plane_rotation(b)
    moved = (m @ in_plane_rotation(a)).T @ g
    np.testing.assert_allclose(moved[:2], rotate_pattern(*(m.T @ g)[:2], a), atol=1e-12)


def test_mirror_orientation_is_proper_and_requires_an_operation():
    m = in_plane_rotation(0.3)
    assert np.linalg.det(mirror_orientation(m, -np.eye(3))) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mirror_orientation(m, None)


def test_constructor_validates_offsets():
    config = TrainingSetConfig(lat_real=np.eye(3), positions=[[0, 0, 0]], numbers=[1], occupancy=[1.0])
    with pytest.raises(ValueError):
        TrainingSet(config, np.eye(3)[None], [1.0], [0], [[0, 0, 1]], [0, 5], np.zeros(4), np.zeros(4), np.zeros(4))
