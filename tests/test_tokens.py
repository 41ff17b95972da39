"""BraggVectors -> flat peaks -> tokens, checked against py4DSTEM's own per-position calibration."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from py4dstem_transformer.io.detector import DetectorCalibration
from py4dstem_transformer.io.peaks import Peaks, peaks_from_braggvectors, peaks_to_braggvectors, read_peaks
from py4dstem_transformer.model.tokens import (TokenConfig, braggvectors_to_tokens, rotate_tokens, scan_tokens,
                                               tokenize)


def random_braggvectors(seed, shape=(5, 4), max_peaks=40, ellipse=True, rotate=True, flip=False):
    """Random raw peaks (pixels) around a per-position origin, with a full py4DSTEM calibration."""
    rng = np.random.default_rng(seed)
    B = int(np.prod(shape))
    lists = []
    for _ in range(B):
        n = rng.integers(0, max_peaks + 1)
        radius, angle = 160 * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(-np.pi, np.pi, n)
        lists.append(np.stack([128 + radius * np.cos(angle), 128 + radius * np.sin(angle), rng.uniform(0.01, 5, n)], 1))
    origin = (rng.uniform(120, 136, shape), rng.uniform(120, 136, shape))
    bv = peaks_to_braggvectors(Peaks.from_lists(lists, shape), origin=origin, q_pixel_size=0.0125)
    if ellipse:
        bv.calibration.set_ellipse((1.0, rng.uniform(0.9, 1.0), rng.uniform(0, np.pi)))
    if rotate:
        bv.calibration.set_QR_rotation_degrees(rng.uniform(-180, 180))
        bv.calibration.set_QR_flip(flip)
    bv.setcal()
    return bv


def reference_tokens(bv, rx, ry, config):
    """The token recipe, one position at a time, on py4DSTEM's own calibrated vectors."""
    v = bv.cal[rx, ry]
    r, theta = np.hypot(v.qx, v.qy), np.arctan2(v.qy, v.qx)
    inside = (r >= config.direct_beam_radius) & (r <= config.k_max)
    r, theta, intensity = r[inside], theta[inside], v.I[inside]
    if len(r) == 0:
        return np.zeros((0, 3))
    intensity = intensity / intensity.max()
    bright = intensity >= config.min_relative_intensity
    order = np.argsort(-intensity[bright], kind="stable")[: config.max_tokens]
    return np.stack([r[bright], theta[bright], intensity[bright]], 1)[order]


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), flip=st.booleans(), max_tokens=st.sampled_from([8, 64]))
def test_tokens_match_py4dstem_calibrated_vectors(seed, flip, max_tokens):
    bv = random_braggvectors(seed, flip=flip)
    config = TokenConfig(max_tokens=max_tokens)
    tokens = braggvectors_to_tokens(bv, config)
    Rx, Ry = bv.Rshape
    assert tokens.tokens.shape[0] == Rx * Ry and tokens.tokens.dtype == torch.float32
    for rx in range(Rx):
        for ry in range(Ry):
            b = rx * Ry + ry
            ref = reference_tokens(bv, rx, ry, config)
            got = tokens.tokens[b][tokens.mask[b]].numpy()
            assert int(tokens.counts[b]) == len(ref) == len(got)
            got = got[np.argsort(-got[:, 2], kind="stable")]
            np.testing.assert_allclose(got, ref, atol=2e-6)


def test_chunking_does_not_change_tokens():
    peaks = peaks_from_braggvectors(random_braggvectors(3, shape=(6, 7)))
    whole = scan_tokens(peaks, chunk_size=10_000)
    for chunk_size in (1, 5, 13):
        chunked = scan_tokens(peaks, chunk_size=chunk_size)
        assert torch.equal(chunked.counts, whole.counts)
        assert torch.equal(chunked.mask, whole.mask)
        # vectorised and scalar-tail SIMD paths of atan2/hypot may differ in the last bit
        torch.testing.assert_close(chunked.tokens, whole.tokens, atol=1e-6, rtol=0)


def test_order_of_peaks_does_not_change_the_token_set():
    rng = np.random.default_rng(0)
    pattern = np.stack([rng.uniform(-1.5, 1.5, 30), rng.uniform(-1.5, 1.5, 30), rng.uniform(0.1, 1, 30)], 1)
    t = lambda p: tokenize(*(torch.tensor(p[:, i]) for i in range(3)), torch.tensor([len(p)]), TokenConfig(max_tokens=10))
    a, b = t(pattern), t(pattern[rng.permutation(30)])
    sort = lambda x: x[0][x[0][:, 2].argsort()]
    assert torch.equal(sort(a.tokens), sort(b.tokens))


def test_direct_beam_range_floor_cap_and_normalisation():
    config = TokenConfig(k_max=2.0, direct_beam_radius=0.1, min_relative_intensity=0.01, max_tokens=3)
    #          direct beam   too far      too faint    kept ............................
    qx = torch.tensor([0.01, 2.5, 0.5, 0.5, -0.7, 0.0, 1.0, 0.3], dtype=torch.float64)
    qy = torch.tensor([-0.02, 0.0, 0.5, 0.0, 0.0, 0.9, 1.0, 0.0], dtype=torch.float64)
    intensity = torch.tensor([100.0, 50.0, 0.05, 8.0, 4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    t = tokenize(qx, qy, intensity, torch.tensor([8]), config)
    got = t.tokens[0][t.mask[0]]
    assert int(t.counts[0]) == 3
    np.testing.assert_allclose(got[:, 2].numpy(), [1.0, 0.5, 0.25])  # brightest kept disk -> 1
    np.testing.assert_allclose(got[:, 0].numpy(), [0.5, 0.7, 0.9], atol=1e-6)  # r in 1/A
    np.testing.assert_allclose(got[:, 1].numpy(), [0.0, np.pi, np.pi / 2], atol=1e-6)  # theta = atan2(qy, qx)


def test_empty_and_direct_beam_only_positions_have_no_tokens():
    cal = DetectorCalibration((128.0, 128.0), 0.0125)
    lists = [np.zeros((0, 3)), [[128.2, 127.9, 10.0]], [[128, 128, 10.0], [168, 128, 1.0]]]
    tokens = scan_tokens(Peaks.from_lists(lists, (3,), cal))
    assert tokens.counts.tolist() == [0, 0, 1] and tokens.mask.sum(1).tolist() == [0, 0, 1]
    assert torch.allclose(tokens.tokens[2, 0], torch.tensor([0.5, 0.0, 1.0]))
    assert (tokens.tokens[~tokens.mask] == 0).all()


def test_uncalibrated_braggvectors_raise_with_the_fix():
    bv = random_braggvectors(0, ellipse=False, rotate=False)
    fresh = peaks_to_braggvectors(peaks_from_braggvectors(bv), origin=(0.0, 0.0), q_pixel_size=0.1)
    fresh.calibration._params.pop("qx0")
    with pytest.raises(ValueError, match=r"no origin.*set_origin"):
        braggvectors_to_tokens(fresh)
    nopix = peaks_to_braggvectors(peaks_from_braggvectors(bv), origin=(128.0, 128.0), q_pixel_size=0.1)
    nopix.calibration.set_Q_pixel_units("pixels")
    nopix.calibration.set_Q_pixel_size(1)
    with pytest.raises(ValueError, match=r"no Q pixel size.*set_Q_pixel_size"):
        braggvectors_to_tokens(nopix)
    nopix.calibration.set_Q_pixel_units("mrad")
    nopix.calibration.set_Q_pixel_size(0.1)
    with pytest.raises(ValueError, match="mrad"):
        braggvectors_to_tokens(nopix)


def test_pixel_size_without_units_warns_and_is_used():
    bv = random_braggvectors(1, ellipse=False, rotate=False)
    bv.calibration.set_Q_pixel_units("pixels")
    with pytest.warns(UserWarning, match="units"):
        tokens = braggvectors_to_tokens(bv)
    assert int(tokens.counts.sum()) > 0


def test_nan_peaks_and_nan_calibration_name_the_positions():
    bv = random_braggvectors(2, shape=(3, 4), ellipse=False, rotate=False)
    peaks = peaks_from_braggvectors(bv)
    intensity = peaks.intensity.copy()
    b = 6  # (rx, ry) = (1, 2)
    intensity[peaks.offsets[b]] = np.nan
    bad = Peaks(peaks.qx, peaks.qy, intensity, peaks.counts, peaks.scan_shape, peaks.calibration)
    assert peaks.counts[b] > 0
    with pytest.raises(ValueError, match=r"NaN or infinite values in the peaks at scan positions \(rx, ry\) \[\(1, 2\)\]"):
        scan_tokens(bad)
    qx0 = np.array(bv.calibration.get_origin()[0], dtype=float)
    qx0[2, 3] = np.inf
    cal = DetectorCalibration((qx0, bv.calibration.get_origin()[1]), peaks.calibration.q_pixel_size)
    if peaks.counts[11] == 0:
        pytest.skip("position (2, 3) drew no peaks")
    with pytest.raises(ValueError, match=r"calibrated peaks.*\(2, 3\)"):
        scan_tokens(Peaks(peaks.qx, peaks.qy, peaks.intensity, peaks.counts, peaks.scan_shape, cal))


def test_users_braggvectors_are_not_modified():
    bv = random_braggvectors(4)
    raw = [pl.data.copy() for row in bv._v_uncal._pointlists for pl in row]
    params = {k: np.copy(v) for k, v in bv.calibration._params.items() if not isinstance(v, (str, type(None)))}
    state = dict(bv.calstate)
    braggvectors_to_tokens(bv)
    assert all(np.array_equal(a, pl.data) for a, pl in zip(raw, (pl for row in bv._v_uncal._pointlists for pl in row)))
    assert all(np.array_equal(v, bv.calibration._params[k]) for k, v in params.items())
    assert bv.calstate == state


def test_file_reader_matches_memory_and_py4dstem_read(tmp_path):
    import py4DSTEM

    bv = random_braggvectors(5, shape=(4, 6))
    path = tmp_path / "bv.h5"
    py4DSTEM.save(str(path), bv, mode="o")
    from_file, in_memory = read_peaks(path), peaks_from_braggvectors(bv)
    for field in ("qx", "qy", "intensity", "counts"):
        assert np.array_equal(getattr(from_file, field), getattr(in_memory, field))
    assert from_file.scan_shape == (4, 6)
    a, b = scan_tokens(from_file), scan_tokens(in_memory)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    read_back = braggvectors_to_tokens(py4DSTEM.read(str(path)))
    assert torch.equal(read_back.tokens, a.tokens)


def test_reader_errors_are_clear(tmp_path):
    import h5py

    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_group("nothing_here")
    with pytest.raises(ValueError, match="no BraggVectors"):
        read_peaks(path)
    with pytest.raises(TypeError, match="expected py4DSTEM BraggVectors"):
        peaks_from_braggvectors(np.zeros((3, 3)))


def test_rotate_tokens_turns_every_disk_counter_clockwise():
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([5, 0, 9, 2])
    qx, qy = torch.rand(16, generator=g) * 4 - 2, torch.rand(16, generator=g) * 4 - 2
    intensity = torch.rand(16, generator=g) + 0.01
    tokens = tokenize(qx, qy, intensity, counts, TokenConfig(k_max=3.0))
    assert rotate_tokens(tokens.tokens, 0.0) is tokens.tokens
    for phi in (0.4, -2.5, np.pi, 7.0):
        turned = rotate_tokens(tokens.tokens, phi)
        c, s = np.cos(phi), np.sin(phi)
        expected = tokenize(c * qx - s * qy, s * qx + c * qy, intensity, counts, TokenConfig(k_max=3.0))
        m = tokens.mask
        assert torch.equal(turned[..., [0, 2]], tokens.tokens[..., [0, 2]])
        assert torch.allclose(turned[m][:, 0], expected.tokens[m][:, 0], atol=1e-5)
        dtheta = torch.remainder(turned[m][:, 1] - expected.tokens[m][:, 1] + np.pi, 2 * np.pi) - np.pi
        assert dtheta.abs().max() < 1e-5
        assert bool(((turned[..., 1] >= -np.pi - 1e-6) & (turned[..., 1] <= np.pi + 1e-6)).all())
