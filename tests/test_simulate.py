"""generate_training_set against py4DSTEM's own simulators, for random full orientations."""


import numpy as np
import pytest
from scipy.spatial import cKDTree

from conftest import make_cu, make_cu2o, make_zns, oracle_crystal
from py4dstem_transformer.simulation import simulate
from py4dstem_transformer.core.rotations import random_rotations
from py4dstem_transformer.simulation.simulate import generate_training_set
from py4dstem_transformer.simulation.simulator import is_collinear, single_blas_thread
from py4dstem_transformer.simulation.training_set import in_plane_rotation

K_MAX = 2.1




def oracle_pattern(x, m, thickness, dynamical, sigma, precession=None, min_rel=1e-3):
    """py4DSTEM's pattern for the full orientation ``m``, post-processed by hand."""
    beams = x.generate_diffraction_pattern(orientation_matrix=m, sigma_excitation_error=sigma, tol_intensity=0,
                                           k_max=K_MAX, precession_angle_degrees=precession)
    if dynamical:
        with single_blas_thread():  # speed only: threads contend on these small eigenproblems
            d = x.generate_dynamical_diffraction_pattern(beams, thickness, zone_axis_cartesian=m[:, 2]).data
    else:
        d = beams.data
    d = d[((d["h"] != 0) | (d["k"] != 0) | (d["l"] != 0)) & (np.hypot(d["qx"], d["qy"]) <= K_MAX)]
    rel = d["intensity"] / d["intensity"].max()
    keep = rel >= min_rel
    return d["qx"][keep], d["qy"][keep], rel[keep]


def assert_same_disks(ours, theirs, tol=1e-6):
    a, b = np.stack(ours[:2], 1), np.stack(theirs[:2], 1)
    assert len(a) == len(b) > 0
    dist, j = cKDTree(b).query(a)
    assert dist.max() < tol and len(np.unique(j)) == len(j)
    np.testing.assert_allclose(ours[2], theirs[2][j], atol=tol, rtol=0)


def in_plane_angle(r, m):
    """phi with ``m == r @ in_plane_rotation(phi)``."""
    d = r.T @ m
    phi = np.arctan2(d[0, 1], d[0, 0])
    np.testing.assert_allclose(r @ in_plane_rotation(phi), m, atol=1e-12)
    return phi


@pytest.mark.parametrize("make, dynamical, precession", [
    pytest.param(make_cu2o, True, None, marks=pytest.mark.slow),  # Bloch oracle, ~1 s; the Cu one below stays fast
    (make_cu, True, None),
    (make_cu, False, None),
    (make_cu2o, False, 1.0),
])
def test_stored_patterns_rotated_to_random_orientations_match_py4dstem(make, dynamical, precession):
    rng = np.random.default_rng(7)
    targets = random_rotations(4, seed=11).numpy()  # uniform on SO(3): general, off-zone-axis orientations
    thickness = [23.0, 187.0]
    ts = generate_training_set(make(), zone_axes=targets[:, :, 2], thickness=thickness, dynamical=dynamical,
                               precession_angle_degrees=precession, progress_bar=False)
    sigma = ts.config.sigma_excitation_error
    oracle = oracle_crystal(make, dynamical)
    symmetry = np.array(ts.config.symmetry)
    checked = 0
    for i in range(len(ts)):
        m = targets[ts.zone_axis_index[i]]
        phi = in_plane_angle(ts.orientation_matrices[i], m)
        t = ts.thickness[i]
        assert np.isnan(t) if not dynamical else t in thickness
        assert_same_disks(ts.pattern(i, angle=phi), oracle_pattern(oracle, m, t, dynamical, sigma, precession))
        # a random proper symmetry operation on the left changes nothing
        s = symmetry[rng.integers(len(symmetry))]
        assert_same_disks(ts.pattern(i, angle=phi), oracle_pattern(oracle, s @ m, t, dynamical, sigma, precession))
        # the mirror copy and its label
        mirrored = ts.orientation(i, angle=phi, mirror=True)
        assert np.linalg.det(mirrored) == pytest.approx(1.0)
        assert_same_disks(ts.pattern(i, angle=phi, mirror=True),
                          oracle_pattern(oracle, mirrored, t, dynamical, sigma, precession))
        checked += 1
    assert checked >= len(targets)


def test_grid_patterns_match_py4dstem_at_random_in_plane_angles():
    ts = generate_training_set(make_cu(), angle_step_zone_axis=8, thickness=[55.0, 310.0], progress_bar=False)
    oracle = oracle_crystal(make_cu, True)
    rng = np.random.default_rng(3)
    for i in rng.choice(len(ts), 6, replace=False):
        phi = rng.uniform(-np.pi, np.pi)
        m = ts.orientation(i, angle=phi)
        assert_same_disks(ts.pattern(i, angle=phi), oracle_pattern(oracle, m, ts.thickness[i], True, 0.04))


def test_default_grid_and_stored_pattern_invariants():
    ts = generate_training_set(make_cu(), thickness=[40.0, 400.0], progress_bar=False)
    assert len(ts.zone_axes) == 406 and ts.config.zone_axis_range == "auto"
    assert ts.info["num_simulated"] == 406 * 2 == len(ts) + sum(ts.info[f"dropped_{k}"]
                                                                for k in ("empty", "collinear", "duplicate"))
    np.testing.assert_allclose(ts.orientation_matrices[:, :, 2], ts.zone_axes[ts.zone_axis_index], atol=1e-12)
    r = np.hypot(ts.qx, ts.qy)
    assert r.max() <= K_MAX + 1e-6 and r.min() > 0.1  # direct beam out
    assert ts.intensity.min() >= 1e-3 - 1e-7
    maxima = np.maximum.reduceat(ts.intensity, ts.offsets[:-1])
    np.testing.assert_allclose(maxima, 1.0, atol=1e-7)
    assert not any(is_collinear(*ts.pattern(i)[:2]) for i in range(0, len(ts), 7))


def test_dedup_of_identical_thicknesses():
    ts = generate_training_set(make_cu(), angle_step_zone_axis=10, thickness=[80.0, 80.0, 300.0],
                               progress_bar=False)
    at_80 = ts.thickness == 80.0
    assert ts.info["dropped_duplicate"] == at_80.sum() > 0  # every kept 80 A pattern was simulated twice
    for z in range(len(ts.zone_axes)):
        t = ts.thickness[ts.zone_axis_index == z]
        assert len(t) == len(np.unique(t))


def test_systematic_rows_are_dropped():
    from py4dstem_transformer.core.zone_axes import fundamental_zone, pattern_symmetry

    directions = fundamental_zone(pattern_symmetry(make_cu())).grid(2.0)[200:210]  # rows appear here
    ts = generate_training_set(make_cu(), zone_axes=directions, progress_bar=False)
    assert ts.info["dropped_collinear"] > 0
    assert ts.info["num_simulated"] == len(ts) + ts.info["dropped_collinear"] + ts.info["dropped_empty"] + \
        ts.info["dropped_duplicate"]
    assert not any(is_collinear(*ts.pattern(i)[:2]) for i in range(len(ts)))


def test_is_collinear():
    assert is_collinear(np.array([0.5, -0.5, 1.0]), np.array([0.2, -0.2, 0.4]))
    assert is_collinear(np.array([0.5]), np.array([0.1]))
    assert not is_collinear(np.array([0.5, 0.0]), np.array([0.0, 0.5]))


def test_user_crystal_is_not_modified():
    cu = make_cu()
    cu.setup_diffraction(200e3)
    cu.calculate_structure_factors(1.0)
    before = (cu.accel_voltage, cu.wavelength, cu.g_vec_all.copy(), cu.struct_factors.copy())
    generate_training_set(cu, angle_step_zone_axis=20, thickness=[100.0], progress_bar=False)
    assert (cu.accel_voltage, cu.wavelength) == before[:2]
    np.testing.assert_array_equal(cu.g_vec_all, before[2])
    np.testing.assert_array_equal(cu.struct_factors, before[3])
    assert not hasattr(cu, "Ug_dict")


def _same_sets(a, b):
    for key in ("qx", "qy", "intensity", "offsets", "orientation_matrices", "thickness", "zone_axis_index",
                "zone_axes"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.config == b.config


@pytest.mark.slow
def test_same_seed_same_set_and_n_jobs_independent(monkeypatch):
    kwargs = dict(num_zone_axes=12, thickness=[20.0, 600.0], num_thicknesses=3, progress_bar=False)
    a = generate_training_set(make_cu2o(), seed=5, **kwargs)
    b = generate_training_set(make_cu2o(), seed=5, n_jobs=2, **kwargs)
    _same_sets(a, b)
    monkeypatch.setattr(simulate, "START_METHOD", "spawn")
    _same_sets(a, generate_training_set(make_cu2o(), seed=5, n_jobs=2, **kwargs))
    c = generate_training_set(make_cu2o(), seed=6, **kwargs)
    assert not np.array_equal(a.zone_axes, c.zone_axes)
    assert a.config.num_thicknesses == 3 and len(np.unique(a.thickness)) > 3


def test_random_directions_are_uniform_in_the_fundamental_zone():
    from scipy.stats import ks_2samp

    ts = generate_training_set(make_cu(), num_zone_axes=400, dynamical=False, progress_bar=False)
    v = ts.zone_axes
    assert np.all((v[:, 0] >= -1e-12) & (v[:, 0] <= v[:, 1] + 1e-12) & (v[:, 1] <= v[:, 2] + 1e-12))
    # reference: uniform directions on the sphere that happen to fall in the triangle
    ref = np.random.default_rng(1).standard_normal((60000, 3))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ref = ref[(ref[:, 0] >= 0) & (ref[:, 0] <= ref[:, 1]) & (ref[:, 1] <= ref[:, 2])]
    for component in range(3):
        assert ks_2samp(v[:, component], ref[:, component]).pvalue > 1e-3


def test_non_centrosymmetric_config_and_precession_guard():
    ts = generate_training_set(make_zns(), angle_step_zone_axis=15, thickness=[150.0], progress_bar=False)
    assert not ts.config.centrosymmetric and ts.config.mirror_operation is not None and len(ts.config.symmetry) == 12
    with pytest.raises(ValueError):
        generate_training_set(make_cu(), precession_angle_degrees=1.0, progress_bar=False)
    with pytest.raises(ValueError):
        generate_training_set(make_cu(), thickness=[-5.0], progress_bar=False)


def test_register_adds_crystal_method():
    simulate.register()
    ts = make_cu().generate_training_set(angle_step_zone_axis=20, dynamical=False, progress_bar=False)
    assert len(ts) == len(ts.zone_axes) and np.isnan(ts.thickness).all()


def test_cli_simulate_writes_a_loadable_set(tmp_path):
    from py4dstem_transformer.cli import main
    from py4dstem_transformer.simulation.training_set import TrainingSet

    out = tmp_path / "cu.h5"
    argv = ["simulate", "--crystal", "Cu", "--out", str(out), "--angle-step", "15", "--thickness", "20:500:3",
            "--no-progress"]
    assert main(argv) == 0
    ts = TrainingSet.load(out)
    np.testing.assert_allclose(ts.config.thickness, np.geomspace(20, 500, 3))
    with pytest.raises(SystemExit):
        main(argv)  # refuses to overwrite
