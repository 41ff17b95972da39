"""Checks without ground truth: method agreement, spatial coherence, the ring calibration check, the overlays."""

import numpy as np
import pytest
import torch

from py4dstem_transformer.core.rotations import random_rotations, rotation_about_z
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.evaluation.agreement import coherence, method_agreement, neighbour_agreement, phase_misorientation
from py4dstem_transformer.evaluation.rings import calibration_check, ring_match, ring_radii
from py4dstem_transformer.io.peaks import Peaks

from conftest import make_cu, make_mg


def _turn(m, deg):
    m = torch.as_tensor(m, dtype=torch.float64)
    angle = torch.as_tensor(np.broadcast_to(np.radians(deg), m.shape[:-2]).copy(), dtype=torch.float64)
    return (m @ rotation_about_z(angle)).numpy()


def test_agreement_is_symmetry_aware_and_phase_aware():
    cubic, hexagonal = point_group_rotations(make_cu()).numpy(), point_group_rotations(make_mg()).numpy()
    m = random_rotations(40, seed=3).numpy()
    equivalent = cubic[np.arange(40) % len(cubic)] @ m  # the same orientation written another way
    phase = np.zeros(40, int)
    np.testing.assert_allclose(phase_misorientation(m, phase, equivalent, phase, [cubic, hexagonal]), 0, atol=1e-6)
    # the same matrices called the hexagonal phase: the cubic rotations are not its symmetry
    hexa = np.ones(40, int)
    assert np.median(phase_misorientation(m, hexa, equivalent, hexa, [cubic, hexagonal])) > 5
    other = phase.copy()
    other[:10] = 1
    other[10:15] = -1
    a = method_agreement(m, phase, _turn(equivalent, 3.0), other, [cubic, hexagonal], tol_deg=5)
    assert np.isinf(a["misorientation"][:15]).all() and np.allclose(a["misorientation"][15:], 3.0, atol=1e-6)
    assert a["same_phase"] == pytest.approx(25 / 40) and a["same_orientation"] == pytest.approx(25 / 40)
    assert method_agreement(m, phase, _turn(m, 7.0), phase, [cubic], tol_deg=5)["same_orientation"] == 0
    with pytest.raises(ValueError, match="different shapes"):
        phase_misorientation(m, phase, m[:5], phase[:5], [cubic])


def test_coherence_of_grains_vs_noise():
    cubic = point_group_rotations(make_cu()).numpy()
    grains = random_rotations(2, seed=1).numpy()
    matrix = np.empty((6, 8, 3, 3))
    matrix[:, :4], matrix[:, 4:] = grains[0], grains[1]
    matrix = _turn(matrix, 1.0 * np.random.default_rng(0).random((6, 8)))  # within-grain scatter below 1 deg
    phase = np.zeros((6, 8), int)
    agree = neighbour_agreement(matrix, phase, [cubic])
    assert not agree[:, 3, 3] .any() and not agree[:, 4, 2].any()  # across the grain boundary (+y of column 3)
    assert agree[:, :3, 3].all() and not agree[0, :, 0].any() and not agree[-1, :, 1].any()  # scan edges
    c = coherence(matrix, phase, [cubic])
    assert c["any_neighbour"] == 1.0
    assert c["pairs"] == pytest.approx(1 - 6 / (5 * 8 + 6 * 7))  # only the 6 boundary pairs disagree
    noise = random_rotations(48, seed=2).numpy().reshape(6, 8, 3, 3)
    assert coherence(noise, phase, [cubic])["any_neighbour"] < 0.2
    phase[2, 2] = -1  # a position without an answer agrees with nothing and is left out
    c = coherence(matrix, phase, [cubic])
    assert c["n"] == 47 and c["map"][2, 2] == 0 and c["map"][1, 2] == 3


def test_ring_match_counts_like_brute_force():
    rng = np.random.default_rng(0)
    q, radii, scales = rng.uniform(0.1, 2, 500), np.sort(rng.uniform(0.2, 1.8, 30)), np.array([0.97, 1.0, 1.04])
    brute = [(np.abs(q[:, None] * s - radii[None]).min(1) <= 0.01).mean() for s in scales]
    np.testing.assert_allclose(ring_match(q, radii, scales, 0.01), brute)


def test_calibration_check_finds_a_pixel_size_error():
    cu = make_cu()
    radii, strength = ring_radii(cu, 1.7)
    assert np.allclose(radii[:2], [np.sqrt(3) / 3.615, 2 / 3.615], atol=1e-3) and strength.max() == 1
    rng = np.random.default_rng(1)
    # peaks on Cu's rings, measured with a Q pixel size 2% too small (radii 2% short), plus background
    r = np.concatenate([rng.choice(radii, 3000, p=strength / strength.sum()) / 1.02 + rng.normal(0, 0.002, 3000),
                        rng.uniform(0.15, 1.6, 600)])
    t = rng.uniform(0, 2 * np.pi, len(r))
    counts = np.full(60, len(r) // 60)
    peaks = Peaks(r * np.cos(t), r * np.sin(t), np.ones_like(r), counts, (6, 10))
    check = calibration_check(peaks, [cu, make_mg()], ["Cu", "Mg"])
    assert check["phases"]["Cu"]["best_scale"] == pytest.approx(1.02, abs=0.002)
    assert check["phases"]["Cu"]["matched_best"] > 0.8 > check["phases"]["Cu"]["matched_at_1"]
    assert check["phases"]["Mg"]["matched_best"] < check["phases"]["Cu"]["matched_best"] - 0.3
    with pytest.raises(ValueError, match="calibrated"):
        calibration_check(Peaks(r * 100, r * 0, np.ones_like(r), counts, (6, 10)), [cu])


def test_overlay_uses_py4dstem_disks_and_the_right_position():
    import matplotlib

    matplotlib.use("Agg")
    from py4dstem_transformer.evaluation.overlay import observed_disks, plot_positions, simulated_disks

    cu = make_cu()
    sim = simulated_disks(cu, np.eye(3), k_max=1.5)  # [001] zone axis: {200} and {220} disks, fourfold
    r = np.hypot(sim[:, 0], sim[:, 1])
    assert np.isclose(r, 2 / 3.615, atol=1e-3).sum() == 4 and np.isclose(r, np.sqrt(8) / 3.615, atol=1e-3).sum() == 4
    assert not hasattr(cu, "struct_factors") and not hasattr(cu, "accel_voltage")  # the user's crystal is untouched
    lists = [np.array([[0.0, 0, 1], [0.1 * i, 0.2, 0.5]]) for i in range(6)]
    peaks = Peaks.from_lists(lists, scan_shape=(2, 3))
    np.testing.assert_allclose(observed_disks(peaks, 1, 2), lists[5])
    with pytest.raises(IndexError, match="outside"):
        observed_disks(peaks, 2, 0)
    phase = np.array([[0, -1, 0], [0, 0, 0]])
    fig = plot_positions(peaks, [(0, 0), (0, 1)], {"a": ([cu], ["Cu"], phase, np.broadcast_to(np.eye(3), (2, 3, 3, 3)))},
                         k_max=1.5, returnfig=True)
    assert "Cu" in fig.axes[0].get_title() and "-" in fig.axes[1].get_title()


def test_disk_fit_scores_the_right_answer_above_a_wrong_one():
    from py4dstem_transformer.evaluation.overlay import disk_fit, simulated_disks

    cu = make_cu()
    m = random_rotations(6, seed=7).numpy()
    for right, wrong in zip(m[:3], m[3:]):
        observed = simulated_disks(cu, right, k_max=1.7)  # a perfect pattern of the right orientation
        good, bad = disk_fit(observed, cu, right), disk_fit(observed, cu, wrong)
        assert good["f1"] == pytest.approx(1.0) and good["explained"] == pytest.approx(1.0)
        assert bad["f1"] < 0.6
    assert disk_fit(np.zeros((0, 3)), cu, m[0]) == {"explained": 0.0, "found": 0.0, "f1": 0.0}
