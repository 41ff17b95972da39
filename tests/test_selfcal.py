"""Self-calibration: the scan-wide Q pixel-size and ellipse error measured on the crystal's own disks, and the
per-candidate origin error the refinement fits."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from py4dstem_transformer.core.rotations import symmetry_min_angle
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.io.peaks import Peaks, peaks_to_braggvectors
from py4dstem_transformer.mapping.config import RefineConfig
from py4dstem_transformer.mapping.refine import refine_orientations
from py4dstem_transformer.mapping.score import tokens_to_xy
from py4dstem_transformer.mapping.selfcal import (SelfCalibrationConfig, _result, fit_correction, sample_runs,
                                                  with_correction)

from conftest import KinematicSet, kinematic_tokens, make_cu, perturb


def _distortion(scale, ellipticity, axis_deg):
    """q_true = C q for a detector whose lengths along ``axis_deg`` read ``1 + ellipticity`` short."""
    a = np.radians(axis_deg)
    n = np.array([np.cos(a), np.sin(a)])
    e = np.eye(2) + ellipticity * np.outer(n, n)
    return scale * e / np.sqrt(np.linalg.det(e))


def test_fit_recovers_a_known_distortion_with_honest_errors():
    rng = np.random.default_rng(0)
    truth = _distortion(0.98, 0.015, 30.0)
    g = rng.uniform(-2, 2, (3000, 2))  # true disk positions
    observed = g @ np.linalg.inv(truth).T + rng.normal(0, 0.004, g.shape)  # what the miscalibrated detector says
    group = np.repeat(np.arange(300), 10)
    c, scale_error, ellipticity_error = fit_correction(observed, g, group)
    np.testing.assert_allclose(c, truth, atol=5e-4)
    r = _result(c, scale_error, ellipticity_error, 300, 3000, SelfCalibrationConfig())
    assert abs(r.scale - 0.98) < 4 * scale_error and 0 < scale_error < 1e-3
    assert abs(r.ellipticity - 0.015) < 4 * ellipticity_error + 1e-4
    assert abs(r.axis_deg - 30.0) < 2.0 and r.applied
    assert r.corrected_q_pixel_size(0.0125) == pytest.approx(0.0125 * r.scale)
    # nothing to correct: identity within the errors, not applied
    c0, se0, ee0 = fit_correction(g + rng.normal(0, 0.004, g.shape), g, group)
    r0 = _result(c0, se0, ee0, 300, 3000, SelfCalibrationConfig())
    assert not r0.applied and r0.note.endswith("not significant, calibration used as given") and r0.reach == np.inf


def test_sample_runs_cover_small_scans_and_spread_over_large_ones():
    assert sample_runs(500, 2048, 16) == [(0, 500)]
    runs = sample_runs(100_000, 2048, 16)
    assert len(runs) == 16 and sum(b - a for a, b in runs) == 2048
    assert runs[0][0] == 0 and runs[-1][1] == 100_000 and all(a < b for a, b in runs)


def test_with_correction_copies_and_composes():
    peaks = Peaks.from_lists([np.array([[1.0, 0.5, 1.0]])], (1, 1))
    once = with_correction(peaks, [[1.02, 0.0], [0.0, 1.02]])
    twice = with_correction(once, [[1.0, 0.01], [0.01, 1.0]])
    assert peaks.calibration is None and once.qx is peaks.qx  # the peaks untouched, their arrays shared
    np.testing.assert_allclose(twice.calibration.correction, np.array([[1.0, 0.01], [0.01, 1.0]]) @ np.diag([1.02, 1.02]))
    from py4dstem_transformer.model.tokens import position_tokens
    xy = tokens_to_xy(position_tokens(once, 0, 1).tokens)[0, 0, :2]
    np.testing.assert_allclose(xy.numpy(), [1.02, 0.51], rtol=1e-5)


def _scan(ks, q_pixel_size_given, n, true_q_pixel=0.0125, origin=(127.3, 129.1)):
    o = ks.offsets
    raw = []
    for i in range(n):
        qx, qy, inten = ks.qx[o[i]:o[i + 1]], ks.qy[o[i]:o[i + 1]], ks.intensity[o[i]:o[i + 1]]
        pix = np.stack([qx / true_q_pixel + origin[0], qy / true_q_pixel + origin[1], inten], 1)
        raw.append(np.vstack([[origin[0], origin[1], 10.0], pix]))
    return peaks_to_braggvectors(Peaks.from_lists(raw, (n // 10, 10)), origin=origin, q_pixel_size=q_pixel_size_given)


@pytest.fixture(scope="module")
def cu_mapper():
    from py4dstem_transformer.mapping.mapper import TransformerOrientationMap
    from py4dstem_transformer.pretrained import load_pretrained
    return TransformerOrientationMap(make_cu(), load_pretrained("Cu"), precision="fp32")


@pytest.fixture(scope="module")
def scan_set():
    return KinematicSet(120, seed=21)


def test_a_pixel_size_error_is_measured_and_corrected(cu_mapper, scan_set):
    s = point_group_rotations(make_cu())
    truth = torch.as_tensor(scan_set.orientation_matrices)

    def strict(om):
        err = torch.rad2deg(symmetry_min_angle(torch.as_tensor(om.matrix[:, :, 0]).reshape(-1, 3, 3), truth, s))
        return float((err <= 5).float().mean())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        right = _scan(scan_set, 0.0125, 120)
        good = cu_mapper.match_orientations(right, progress_bar=False)
        assert not good.self_calibration.applied and good.self_calibration.patterns >= 20
        plain = cu_mapper.match_orientations(right, progress_bar=False, self_calibrate=False)
        np.testing.assert_array_equal(good.matrix, plain.matrix)  # a no-op where the calibration is right
        off = _scan(scan_set, 0.0125 * 1.025, 120)  # the camera length 2.5% off
        before = off.calibration.get_Q_pixel_size()
        bad = cu_mapper.match_orientations(off, progress_bar=False)
        uncorrected = cu_mapper.match_orientations(off, progress_bar=False, self_calibrate=False)
    m = bad.self_calibration
    assert m.applied and abs(m.scale * 1.025 - 1) < 0.003, m.note  # the reported correction within 0.3%
    assert m.note.startswith("self-calibration: Q pixel size x 0.97") and "applied" in m.note
    assert m.corrected_q_pixel_size(before) == pytest.approx(0.0125, rel=0.003)
    assert off.calibration.get_Q_pixel_size() == before  # the user's calibration untouched
    assert strict(bad) >= strict(good) - 0.03 and strict(bad) > strict(uncorrected)


def test_refinement_fits_an_origin_error():
    ks, tokens, reflections = kinematic_tokens(60, seed=7)
    s = point_group_rotations(make_cu())
    true = torch.as_tensor(ks.orientation_matrices)
    obs = tokens_to_xy(tokens.tokens)
    t = torch.tensor([0.02, -0.015])
    shifted = torch.cat([obs[..., :2] + t, obs[..., 2:]], -1)  # every disk off by the origin error
    start = perturb(true, 0.5, 1.0, seed=1).float()
    fit, noise, shift = refine_orientations(start, shifted, tokens.mask, reflections, k_max=2.1, r_min=0.1,
                                            return_noise=True, return_shift=True)
    plain = refine_orientations(start, shifted, tokens.mask, reflections, RefineConfig(fit_origin=False),
                                k_max=2.1, r_min=0.1)
    ok = tokens.counts >= 8
    err = torch.rad2deg(symmetry_min_angle(fit.double(), true, s))[ok]
    err_plain = torch.rad2deg(symmetry_min_angle(plain.double(), true, s))[ok]
    assert float((shift[ok] - t).norm(dim=-1).median()) < 0.002
    assert float(err.median()) < 0.1 < float(err_plain.median())
    # without an origin error the fitted shift stays near zero
    _, _, none = refine_orientations(start, obs, tokens.mask, reflections, k_max=2.1, r_min=0.1,
                                     return_noise=True, return_shift=True)
    assert float(none[ok].norm(dim=-1).median()) < 0.002


def test_the_detector_reach_is_the_outer_radius_most_patterns_reach():
    from types import SimpleNamespace

    from py4dstem_transformer.mapping.selfcal import SelfCalibration, detector_reach, phases_within_reach
    from py4dstem_transformer.model.tokens import tokenize

    rng = np.random.default_rng(0)
    n, k = 200, 10
    r = rng.uniform(0.3, 1.4, (n, k))  # a detector edge at 1.4 1/A
    theta = rng.uniform(-np.pi, np.pi, (n, k))
    qx, qy = (torch.as_tensor(v.ravel(), dtype=torch.float32) for v in (r * np.cos(theta), r * np.sin(theta)))
    tokens = tokenize(qx, qy, torch.ones(n * k), torch.full((n,), k))
    config = SelfCalibrationConfig()
    reach = detector_reach([tokens], config)
    assert 1.3 < reach <= 1.4
    phase = SimpleNamespace(k_max=2.2)  # the model's window
    cut = SelfCalibration(reach=reach, reach_applied=True)
    k_max = [p.k_max for p in phases_within_reach([_phase_like(2.2)], cut, config)]
    assert k_max == [pytest.approx(reach + config.reach_pad)]
    assert phases_within_reach([phase], SelfCalibration(reach=reach), config)[0] is phase  # not applied: as given


def _phase_like(k_max):
    from py4dstem_transformer.core.kinematics import Reflections
    from py4dstem_transformer.mapping.phase import Phase

    crystal = make_cu()
    reflections = Reflections.from_crystal(crystal, k_max, 300e3)
    return Phase("Cu", crystal, reflections, point_group_rotations(crystal).numpy(), 0.5, k_max, 0.1)


def test_the_sample_stops_once_enough_patterns_are_sure_and_what_it_maps_is_spread_over_the_scan(monkeypatch):
    """One kinematic pattern at every one of 640 positions, its lengths 2% long; the fake matcher answers the truth,
    sure. Of a sample of eight runs of 40, with ``enough`` 100 sure patterns (and ``min_sample`` 64) three runs are
    mapped: the first, the fifth and the third (spread over the scan), the first two in one call; the scale comes out
    as from all eight."""
    from py4dstem_transformer.mapping import selfcal
    from py4dstem_transformer.model.tokens import TokenConfig

    assert selfcal.spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7] and sorted(selfcal.spread_order(5)) == list(range(5))
    ks = KinematicSet(12, seed=3)
    i = int(np.argmax(np.diff(ks.offsets)))
    a, b = ks.offsets[i], ks.offsets[i + 1]
    pattern = np.stack([ks.qx[a:b] * 1.02, ks.qy[a:b] * 1.02, ks.intensity[a:b]], 1)
    peaks = Peaks.from_lists([pattern] * 640, (64, 10))
    truth = torch.as_tensor(ks.orientation_matrices[i], dtype=torch.float32)
    span_of, mapped = {}, []

    def position_tokens(peaks, start, stop, config):
        t = tokens_of(peaks, start, stop, config)
        span_of[id(t)] = (start, stop)
        return t

    def best_matches(tokens):
        n = len(tokens)
        return truth.expand(n, 3, 3), torch.ones(n), torch.zeros(n, dtype=torch.long)

    calls = []

    def runs_pairs(runs, *args):  # which runs are mapped, and which of them in one call
        calls.append([span_of[id(t)] for t in runs])
        mapped.extend(calls[-1])
        return runs_pairs_of(runs, *args)

    tokens_of, runs_pairs_of = selfcal.position_tokens, selfcal._runs_pairs
    monkeypatch.setattr(selfcal, "position_tokens", position_tokens)
    monkeypatch.setattr(selfcal, "_runs_pairs", runs_pairs)
    runs = selfcal.sample_runs(640, 320, 8)
    config = SelfCalibrationConfig(sample=320, sample_fraction=1.0, min_sample=64, runs=8, enough=100)
    early = selfcal.self_calibrate(peaks, TokenConfig(), best_matches, [_phase_like(2.2)], 0.02, config)
    first, mapped[:] = mapped[:3], []
    every = selfcal.self_calibrate(peaks, TokenConfig(), best_matches, [_phase_like(2.2)], 0.02,
                                   dataclasses.replace(config, enough=10**9))
    assert first == [runs[0], runs[4], runs[2]] and early.patterns == 120 and "of 120 mapped" in early.note
    assert calls[:2] == [[runs[0], runs[4]], [runs[2]]]  # the 64 positions of min_sample in one call, then run by run
    assert every.patterns == 320 and sorted(mapped[:8]) == runs
    assert early.applied and abs(early.scale * 1.02 - 1) < 1e-3 and abs(early.scale - every.scale) < 1e-4


def test_runs_mapped_in_one_call_pair_up_as_when_mapped_one_by_one():
    """Runs of different widths (disks per pattern) joined for one matcher call: each run's pairs are exactly those
    of the run mapped alone. The fake matcher answers each pattern's truth from its own disks only (padding
    ignored), so any mix-up of rows or padding between the runs would show."""
    from py4dstem_transformer.mapping import selfcal
    from py4dstem_transformer.model.tokens import TokenConfig, position_tokens

    ks = KinematicSet(24, seed=5)
    patterns = [np.stack([ks.qx[a:b], ks.qy[a:b], ks.intensity[a:b]], 1) for a, b in zip(ks.offsets[:-1], ks.offsets[1:])]
    truths = torch.as_tensor(np.asarray(ks.orientation_matrices), dtype=torch.float32)
    key = {round(float(p[:, 2].sum()), 4): i for i, p in enumerate(patterns)}
    assert len(key) == len(patterns)  # each pattern told apart by its intensities
    peaks = Peaks.from_lists(patterns, (len(patterns), 1))
    runs = [position_tokens(peaks, a, b, TokenConfig()) for a, b in ((0, 7), (7, 15), (15, 24))]
    assert len({r.tokens.shape[1] for r in runs}) > 1  # padded to different widths

    def best_matches(tokens):
        which = [key[round(float(s), 4)] for s in tokens.tokens[..., 2].sum(1)]
        sure = (torch.tensor(which) % 3 != 0).float()  # every third pattern unsure
        return truths[which], sure, torch.zeros(len(tokens), dtype=torch.long)

    config = SelfCalibrationConfig(min_disks=1)
    args = ([_phase_like(2.2)], 0.02, 0.05, config)
    joined = selfcal._runs_pairs(runs, best_matches, *args)
    alone = [selfcal._runs_pairs([r], best_matches, *args)[0] for r in runs]
    for j, a in zip(joined, alone):
        assert j[3] == a[3] > 0
        for x, y in zip(j[:3], a[:3]):
            np.testing.assert_array_equal(x, y)
