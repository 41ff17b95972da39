"""simulate_scan: synthetic BraggVectors whose peaks match py4DSTEM at the ground-truth orientations."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from conftest import make_cu, make_cu2o, oracle_crystal
from py4dstem_transformer.io.peaks import peaks_from_braggvectors
from py4dstem_transformer.simulation.scan import simulate_scan, voronoi_grains
from py4dstem_transformer.simulation.simulator import single_blas_thread

K_MAX = 2.1


def oracle(make, m, thickness, dynamical):
    """py4DSTEM's pattern at orientation m: (qx, qy, I / brightest diffracted), direct beam first."""
    x = oracle_crystal(make, dynamical, K_MAX)
    sigma = 0.04 if dynamical else 0.02
    d = x.generate_diffraction_pattern(orientation_matrix=m, sigma_excitation_error=sigma, tol_intensity=0, k_max=K_MAX)
    if dynamical:
        with single_blas_thread():  # speed only
            d = x.generate_dynamical_diffraction_pattern(d, thickness, zone_axis_cartesian=m[:, 2])
    d = d.data
    direct = (d["h"] == 0) & (d["k"] == 0) & (d["l"] == 0)
    brightest = d["intensity"][~direct].max()
    keep = direct | (d["intensity"] >= 1e-3 * brightest)
    d = d[keep][np.argsort(~direct[keep], kind="stable")]
    return d["qx"], d["qy"], d["intensity"] / brightest


def calibrated(bv, rx, ry):
    v = bv.cal[rx, ry]
    return v.qx, v.qy, v.I


def assert_same_peaks(ours, theirs, tol=1e-9):
    a, b = np.stack(ours[:2], 1), np.stack(theirs[:2], 1)
    assert len(a) == len(b)
    dist, j = cKDTree(b).query(a)
    assert dist.max() < tol and len(np.unique(j)) == len(j)
    np.testing.assert_allclose(ours[2], theirs[2][j], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dynamical", [False, True])
def test_clean_scan_matches_py4dstem_at_ground_truth(dynamical):
    bv, truth = simulate_scan([make_cu(), make_cu2o()], scan_shape=(20, 16), num_grains=4, dynamical=dynamical,
                              seed=3, progress_bar=False)
    assert bv.calstate["center"] and bv.calstate["pixel"]
    assert truth.orientation_matrices.shape == (20, 16, 3, 3) and truth.phase.shape == (20, 16)
    makes = (make_cu, make_cu2o)
    for g in np.unique(truth.grain[truth.grain >= 0]):
        rx, ry = np.argwhere(truth.grain == g)[0]
        m, phase, t = truth.orientation_matrices[rx, ry], truth.phase[rx, ry], truth.thickness[rx, ry]
        np.testing.assert_array_equal(m, truth.grain_orientations[g])
        assert phase == truth.grain_phase[g] and 20 <= t <= 500
        assert_same_peaks(calibrated(bv, rx, ry), oracle(makes[phase], m, t, dynamical))


def test_vacuum_positions_show_only_the_direct_beam_at_the_origin():
    bv, truth = simulate_scan(make_cu(), scan_shape=(30, 30), num_grains=6, num_vacuum_grains=2, dynamical=False,
                              seed=1, progress_bar=False)
    vacuum = truth.phase == -1
    assert vacuum.any() and np.array_equal(vacuum, truth.grain == -1)
    assert np.isnan(truth.thickness[vacuum]).all() and not truth.orientation_matrices[vacuum].any()
    assert (truth.grain_phase == -1).sum() == 2
    for rx, ry in np.argwhere(vacuum)[:20]:
        raw = bv.raw[rx, ry]
        assert len(raw.qx) == 1
        np.testing.assert_allclose([raw.qx[0], raw.qy[0]], truth.origin[rx, ry], atol=1e-12)
    # the origin is off-centre and drifts across the scan
    assert np.abs(truth.origin - 128).min() > 0.5 and np.ptp(truth.origin[..., 0]) > 1.0
    np.testing.assert_allclose(bv.calibration.get_origin()[0], truth.origin[..., 0])
    assert bv.calibration.get_Q_pixel_size() == truth.q_pixel_size


def test_voronoi_grains_have_no_wrap_around():
    labels = voronoi_grains((40, 30), 7, np.random.default_rng(4), boundaries=False)
    seeds = np.random.default_rng(4).uniform((0, 0), (40, 30), size=(7, 2))
    rx, ry = np.meshgrid(np.arange(40) + 0.5, np.arange(30) + 0.5, indexing="ij")
    dist = np.hypot(rx[..., None] - seeds[:, 0], ry[..., None] - seeds[:, 1])
    np.testing.assert_array_equal(labels, dist.argmin(-1))
    with_edges = voronoi_grains((40, 30), 7, np.random.default_rng(4))
    edge = with_edges == -1
    expected = np.zeros_like(edge)
    expected[:-1] |= labels[:-1] != labels[1:]
    expected[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    np.testing.assert_array_equal(edge, expected)
    assert not edge[-1].all() and not edge[:, -1].all()  # the scan border is not a boundary


def _diffracted_counts(bv, truth):
    p = peaks_from_braggvectors(bv)
    return p.counts.reshape(truth.phase.shape) - 1, p


def test_damage_knobs():
    kwargs = dict(scan_shape=(16, 16), num_grains=3, dynamical=False, vacuum_boundaries=False, seed=2,
                  progress_bar=False)
    clean_bv, truth = simulate_scan(make_cu(), **kwargs)
    n_clean, clean = _diffracted_counts(clean_bv, truth)
    # dropped weak disks: floor(fraction * n) of the weakest go
    bv, _ = simulate_scan(make_cu(), drop_weakest=0.5, **kwargs)
    n_drop, dropped = _diffracted_counts(bv, truth)
    np.testing.assert_array_equal(n_drop, n_clean - np.floor(0.5 * n_clean))
    a, b = clean.offsets[0], clean.offsets[1]
    weakest_kept = dropped.intensity[dropped.offsets[0] + 1:dropped.offsets[1]].min()
    removed = np.setdiff1d(clean.intensity[a:b], dropped.intensity[dropped.offsets[0]:dropped.offsets[1]])
    assert removed.max() <= weakest_kept
    # spurious disks: exactly that many more per position
    bv, _ = simulate_scan(make_cu(), spurious=2, **kwargs)
    np.testing.assert_array_equal(_diffracted_counts(bv, truth)[0], n_clean + 2)
    # jitter and intensity noise keep the disk order: compare disk by disk
    bv, _ = simulate_scan(make_cu(), jitter=0.01, intensity_noise=0.2, **kwargs)
    noisy = peaks_from_braggvectors(bv)
    assert np.array_equal(noisy.counts, clean.counts)
    shift = np.concatenate([noisy.qx - clean.qx, noisy.qy - clean.qy]) * truth.q_pixel_size
    direct = np.zeros(len(clean.qx), bool)
    direct[clean.offsets[:-1]] = True
    assert np.abs(shift[np.tile(direct, 2)]).max() < 1e-9  # the direct beam does not move
    assert np.std(shift[~np.tile(direct, 2)]) == pytest.approx(0.01, rel=0.1)
    assert np.std(np.log(noisy.intensity / clean.intensity)) == pytest.approx(0.2, rel=0.1)


def test_same_seed_same_scan_and_crystals_untouched():
    cu = make_cu()
    a, ta = simulate_scan(cu, scan_shape=(12, 12), num_grains=3, jitter=0.005, spurious=1, seed=9, progress_bar=False)
    b, tb = simulate_scan(cu, scan_shape=(12, 12), num_grains=3, jitter=0.005, spurious=1, seed=9, progress_bar=False)
    pa, pb = peaks_from_braggvectors(a), peaks_from_braggvectors(b)
    for key in ("qx", "qy", "intensity", "counts"):
        np.testing.assert_array_equal(getattr(pa, key), getattr(pb, key))
    np.testing.assert_array_equal(ta.orientation_matrices, tb.orientation_matrices)
    assert not hasattr(cu, "struct_factors") and not hasattr(cu, "Ug_dict")


def test_scan_feeds_the_tokenizer():
    from py4dstem_transformer.model.tokens import TokenConfig, braggvectors_to_tokens

    bv, truth = simulate_scan(make_cu(), scan_shape=(10, 10), num_grains=2, dynamical=False, seed=0,
                              progress_bar=False)
    tokens = braggvectors_to_tokens(bv, TokenConfig(k_max=K_MAX))
    assert tokens.tokens.shape[0] == 100
    crystalline = (truth.phase >= 0).ravel()
    assert (tokens.counts[torch_index(crystalline)] > 0).all() and (tokens.counts[torch_index(~crystalline)] == 0).all()
    assert tokens.tokens[..., 0][tokens.mask].min() >= 0.1  # direct beam removed


def torch_index(mask):
    import torch

    return torch.from_numpy(np.flatnonzero(mask))
