"""Property-based tests of the mapper's input (issue 21, item 2).

Random peak sets, built as calibrated py4DSTEM ``BraggVectors`` in memory: 0-500 peaks per position,
duplicates, peaks on the direct beam, intensities from 1e-30 to 1e30 (zero and negative too), peaks all
beyond the model's ``k_max``. Whatever the peaks, mapping never crashes, gives finite proper rotations
and ``corr`` in [0, 1], leaves the user's BraggVectors alone and gives the same answer twice.

Hypothesis draws the shape of each pattern (how many peaks, which kinds) and a seed; numpy draws the
values from the seed, so 500-peak patterns stay cheap to generate.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import scan_from_patterns

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True)
ORIGIN, Q_PIXEL = (127.3, 129.1), 0.0125


@pytest.fixture(scope="module")
def cu_mapper():
    from py4dstem_transformer import TransformerOrientationMap

    return TransformerOrientationMap.pretrained("Cu", workers=1)


@pytest.fixture(scope="module")
def two_phase_mapper():
    from py4dstem_transformer import TransformerOrientationMap

    return TransformerOrientationMap.pretrained("Cu+Cu2O", workers=1)


# -- strategies ------------------------------------------------------------------------------------
RADII = ("inside", "beyond", "origin", "mixed")
INTENSITIES = ("uniform", "log_wide", "zero", "negative", "signed", "equal", "one_bright")


@st.composite
def patterns(draw, k_max=2.205):
    """One position's calibrated ``(n, 3)`` peaks ``(qx, qy, I)`` in 1/A, and whether a direct beam is added."""
    n = draw(st.one_of(st.integers(0, 6), st.integers(0, 40), st.integers(0, 500)))
    radii, kind = draw(st.sampled_from(RADII)), draw(st.sampled_from(INTENSITIES))
    scale = 10.0 ** draw(st.integers(-30, 30))
    duplicates = draw(st.sampled_from([0, 0, 1, 5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if radii == "inside":
        r = rng.uniform(0.0, k_max, n)
    elif radii == "beyond":
        r = rng.uniform(k_max * 1.01, 4 * k_max, n)
    elif radii == "origin":
        r = np.zeros(n)
    else:
        r = rng.choice([0.0, 0.05, 0.5, 1.0, 2.0, k_max * 1.5], n) + rng.uniform(0, 0.01, n) * (rng.random(n) < 0.5)
    theta = rng.uniform(-np.pi, np.pi, n)
    if kind == "uniform":
        i = rng.uniform(0, 1, n)
    elif kind == "log_wide":
        i = 10.0 ** rng.uniform(-30, 30, n)
    elif kind == "zero":
        i = np.zeros(n)
    elif kind == "negative":
        i = -rng.uniform(0, 1, n)
    elif kind == "signed":
        i = rng.uniform(-1, 1, n)
    elif kind == "equal":
        i = np.ones(n)
    else:
        i = np.where(np.arange(n) == 0, 1.0, 1e-6)
    p = np.stack([r * np.cos(theta), r * np.sin(theta), i * (1.0 if kind == "log_wide" else scale)], 1)
    if duplicates and n:
        p = np.concatenate([p] + [p[rng.integers(0, n, min(n, 50))] for _ in range(duplicates)])
        p = p[rng.permutation(len(p))]
    return p


@st.composite
def scans(draw):
    """``(lists, scan_shape, direct_beam)``: 1x1 to 2x3 positions of :func:`patterns`."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    lists = [draw(patterns()) for _ in range(shape[0] * shape[1])]
    direct_beam = draw(st.sampled_from([0.0, 10.0, 1e30, -5.0]))
    return lists, shape, direct_beam


def build(lists, shape, direct_beam):
    return scan_from_patterns(lists, shape, origin=ORIGIN, q_pixel_size=Q_PIXEL, direct_beam=direct_beam)


def snapshot(bv):
    """Everything of a BraggVectors the mapper must leave alone: raw vectors, calibration, calstate."""
    raw = [pl.data.copy() for row in bv._v_uncal._pointlists for pl in row]
    params = {k: (np.copy(v) if isinstance(v, np.ndarray) else v) for k, v in bv.calibration._params.items()}
    return raw, params, dict(bv.calstate)


def assert_unchanged(bv, before):
    raw, params, state = before
    now = [pl.data for row in bv._v_uncal._pointlists for pl in row]
    assert len(now) == len(raw)
    for a, b in zip(raw, now):
        assert a.dtype == b.dtype and all(np.array_equal(a[f], b[f], equal_nan=True) for f in a.dtype.names)
    assert set(bv.calibration._params) == set(params)
    for k, v in params.items():
        assert np.array_equal(np.asarray(v), np.asarray(bv.calibration._params[k])), k
    assert dict(bv.calstate) == state


def assert_proper_rotations(matrix):
    m = np.asarray(matrix).reshape(-1, 3, 3)
    assert np.isfinite(m).all()
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-5)
    np.testing.assert_allclose(m @ m.transpose(0, 2, 1), np.broadcast_to(np.eye(3), m.shape), atol=1e-5)


def assert_corr(corr):
    corr = np.asarray(corr)
    assert np.isfinite(corr).all() and (corr >= 0).all() and (corr <= 1).all(), corr


def usable(p, k_max, direct_beam_radius):
    """Whether a calibrated pattern holds a disk the encoder can read (in range, positive intensity)."""
    r = np.hypot(p[:, 0], p[:, 1])
    return bool(((r >= direct_beam_radius * 1.001) & (r <= k_max * 0.999) & (p[:, 2] > 0)).any())


def match(mapper, bv, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mapper.match_orientations(bv, progress_bar=False, **kw)


# -- properties ------------------------------------------------------------------------------------
@pytest.mark.slow
@settings(max_examples=25, **SETTINGS)
@given(scan=scans(), num_matches=st.sampled_from([1, 4]))
def test_any_peak_set_maps_to_proper_rotations_and_corr_in_0_1(cu_mapper, scan, num_matches):
    lists, shape, direct_beam = scan
    bv = build(*scan)
    before = snapshot(bv)
    om = match(cu_mapper, bv, num_matches_return=num_matches)
    assert om.matrix.shape == (*shape, num_matches, 3, 3) and om.corr.shape == (*shape, num_matches)
    assert_proper_rotations(om.matrix)
    assert_corr(om.corr)
    assert_unchanged(bv, before)
    # nothing to read -> no match
    config = cu_mapper.token_config
    for b, p in enumerate(lists):
        if not usable(p, config.k_max, config.direct_beam_radius) and not _borderline(p, config):
            assert (om.corr.reshape(-1, num_matches)[b] == 0).all()
    again = match(cu_mapper, bv, num_matches_return=num_matches)
    assert np.array_equal(om.matrix, again.matrix) and np.array_equal(om.corr, again.corr)
    assert_unchanged(bv, before)


def _borderline(p, config):
    r = np.hypot(p[:, 0], p[:, 1])
    near = lambda a: np.isclose(r, a, rtol=2e-3, atol=0)
    return bool((near(config.k_max) | near(config.direct_beam_radius)).any())


@settings(max_examples=15, **SETTINGS)
@given(pattern=patterns(), exponent=st.one_of(st.integers(-60, 60), st.integers(-900, 900)))
def test_scaling_every_intensity_by_a_power_of_two_changes_nothing(cu_mapper, pattern, exponent):
    """Intensities are relative: 1e-300 or 1e300 times a pattern is the same pattern. Before the fix, intensities
    beyond float32's range (a finite 1e39) were refused as "NaN or infinite", and below it (1e-300) read as 0."""
    magnitude = np.abs(pattern[:, 2])
    pattern = pattern[(magnitude == 0) | ((magnitude >= 1e-30) & (magnitude <= 1e30))]  # 2**exponent * I stays normal
    scaled = pattern * np.array([1.0, 1.0, 2.0 ** exponent])
    a = match(cu_mapper, build([pattern], (1, 1), 0.0), num_matches_return=2)
    b = match(cu_mapper, build([scaled], (1, 1), 0.0), num_matches_return=2)
    assert np.array_equal(a.matrix, b.matrix) and np.array_equal(a.corr, b.corr)


@pytest.mark.slow
@settings(max_examples=25, **SETTINGS)
@given(scan=scans(), num_matches=st.sampled_from([1, 4]))
def test_two_phase_model_gives_a_valid_phase_map(two_phase_mapper, scan, num_matches):
    lists, shape, direct_beam = scan
    bv = build(*scan)
    before = snapshot(bv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = two_phase_mapper.match_phases(bv, num_matches_return=num_matches, progress_bar=False)
        again = two_phase_mapper.match_phases(bv, num_matches_return=num_matches, progress_bar=False)
    assert_unchanged(bv, before)
    assert pm.phase_index.shape == shape and set(np.unique(pm.phase_index)) <= {-1, 0, 1}
    prob = pm.phase_probability
    assert prob.shape == (*shape, 2) and np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1 + 1e-6).all()
    for om in pm.orientation_maps:
        assert om.matrix.shape == (*shape, num_matches, 3, 3)
        assert_proper_rotations(om.matrix)
        assert_corr(om.corr)
    assert_corr(pm.corr)
    assert ((pm.phase_index == -1) == (pm.corr == 0)).all()
    assert np.array_equal(pm.phase_index, again.phase_index)
    for a, b in zip(pm.orientation_maps, again.orientation_maps):
        assert np.array_equal(a.matrix, b.matrix) and np.array_equal(a.corr, b.corr)


@settings(max_examples=30, **SETTINGS)
@given(pattern=patterns(), num_matches=st.sampled_from([1, 4]))
def test_single_pattern_on_random_pointlists(cu_mapper, pattern, num_matches):
    from emdfile import PointList

    data = np.zeros(len(pattern), [("qx", "f8"), ("qy", "f8"), ("intensity", "f8")])
    data["qx"], data["qy"], data["intensity"] = pattern.T
    pointlist = PointList(data=data.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orientation = cu_mapper.match_single_pattern(pointlist, num_matches_return=num_matches)
    assert all(np.array_equal(pointlist.data[f], data[f], equal_nan=True) for f in data.dtype.names)
    assert orientation.matrix.shape == (num_matches, 3, 3) and orientation.corr.shape == (num_matches,)
    assert_proper_rotations(orientation.matrix)
    assert_corr(orientation.corr)


@settings(max_examples=20, **SETTINGS)
@given(scan=scans(), where=st.integers(0, 5), field=st.sampled_from(["qx", "qy", "intensity"]),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_or_infinite_peaks_are_refused_naming_the_position(cu_mapper, scan, where, field, bad):
    lists, shape, direct_beam = scan
    b = where % len(lists)
    lists = [p.copy() for p in lists]
    lists[b] = np.vstack([lists[b], [[0.5, 0.5, 1.0]]])
    lists[b][-1, ["qx", "qy", "intensity"].index(field)] = bad
    bv = build(lists, shape, direct_beam)
    before = snapshot(bv)
    rx, ry = np.unravel_index(b, shape)
    with pytest.raises(ValueError, match=rf"NaN or infinite values in the peaks at scan positions \(rx, ry\) "
                                         rf"\[.*\({rx}, {ry}\).*\]"):
        match(cu_mapper, bv)
    assert_unchanged(bv, before)


@settings(max_examples=20, **SETTINGS)
@given(pattern=patterns(), copies=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_a_disk_listed_twice_is_one_disk(cu_mapper, pattern, copies, seed):
    """Exact repeats of peaks (a peak finder reporting a disk twice) add no evidence: same answer, same corr.
    Before the fix, 3 random disks each listed 20 times were reported with a calibrated corr of up to 1.0."""
    rng = np.random.default_rng(seed)
    repeated = np.concatenate([pattern] + [pattern[rng.integers(0, len(pattern), len(pattern))]
                                           for _ in range(copies)]) if len(pattern) else pattern
    a = match(cu_mapper, build([pattern], (1, 1), 10.0), num_matches_return=2, min_number_peaks=0)
    b = match(cu_mapper, build([repeated], (1, 1), 10.0), num_matches_return=2, min_number_peaks=0)
    assert np.array_equal(a.matrix, b.matrix) and np.array_equal(a.corr, b.corr)


@pytest.mark.parametrize("intensity", [1e39, 1e300, 1e-300, 5e-324])
def test_intensities_beyond_float32_map_like_ordinary_ones(cu_mapper, intensity):
    disks = np.array([[0.5, 0.5, 1.0], [1.0, -0.3, 0.5], [-0.7, 0.4, 0.3], [0.2, -1.1, 0.2]])
    ordinary = match(cu_mapper, build([disks], (1, 1), 0.0), num_matches_return=2)
    extreme = match(cu_mapper, build([disks * [1, 1, intensity]], (1, 1), 0.0), num_matches_return=2)
    assert ordinary.corr[0, 0, 0] > 0
    if intensity == 5e-324:  # the smallest float64: the fainter disks underflow to 0 even in float64
        assert_corr(extreme.corr)
        return
    # the rescaled float32 intensities may differ from the ordinary ones in the last bit (~3e-8), no more; the
    # refinement carries that into the orientation's last digits and the calibrated probability of this
    # four-disk pattern moves by ~1e-5 (a plain factor 3 on the intensities moves it by 1e-4 on an Intel
    # Xeon with MKL, 2026-12-03)
    np.testing.assert_allclose(extreme.matrix, ordinary.matrix, atol=1e-5)
    np.testing.assert_allclose(extreme.corr, ordinary.corr, atol=5e-4)


def test_three_random_disks_repeated_are_not_a_confident_match(cu_mapper):
    rng = np.random.default_rng(2)
    disks = np.c_[rng.uniform(-1.5, 1.5, (3, 2)), rng.uniform(0.1, 1, 3)]
    once = match(cu_mapper, build([disks], (1, 1), 10.0)).corr[0, 0, 0]
    twenty = match(cu_mapper, build([np.repeat(disks, 20, axis=0)], (1, 1), 10.0)).corr[0, 0, 0]
    assert twenty == once < 0.9
