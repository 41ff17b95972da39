"""The network's phase probability tempered before it names the phase (``MapConfig.phase_power``)."""

import warnings

import numpy as np
import pytest

from py4dstem_transformer.mapping.confidence import phase_weights
from py4dstem_transformer.mapping.config import MapConfig, uncalibrated_warning


def test_the_weights_are_the_probabilities_over_the_favourites_raised():
    p = np.array([[0.9, 0.1], [0.996, 0.004], [0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    w1 = phase_weights(p, 1.0)
    np.testing.assert_allclose(w1, p / p.max(1, keepdims=True), rtol=1e-12)
    w = phase_weights(p, 0.5)
    np.testing.assert_allclose(w, np.sqrt(p / p.max(1, keepdims=True)), rtol=1e-12)
    assert np.all(w.max(1) == 1.0)  # the favourite weighs 1: its corr is its orientation's confidence
    np.testing.assert_array_equal(w.argmax(1), p.argmax(1))  # the favourite stays the favourite ...
    assert w[1, 1] > w1[1, 1]  # ... but a phase it finds unlikely counts for more
    np.testing.assert_allclose(w / w[:, :1], (p / p[:, :1]) ** 0.5, rtol=1e-12)  # the weights' ratios: p's, to the power
    assert w[3, 1] == 0.0  # a phase the network rules out stays out
    np.testing.assert_allclose(phase_weights(p[:3], 0.0), 1.0)  # 0: every phase it gives any probability alike
    np.testing.assert_allclose(phase_weights(np.array([[0.7, 0.2, 0.1]]), 1.0), [[1.0, 2 / 7, 1 / 7]])


def test_a_negative_power_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="phase_power must be >= 0"):
        phase_weights(np.array([[0.5, 0.5]]), -1.0)
    with pytest.raises(ValueError, match="phase_power must be >= 0"):
        MapConfig(phase_power=-0.5)
    with pytest.raises(ValueError, match="phase_power must be >= 0"):
        MapConfig().replace(phase_power=float("nan"))


def test_the_setting_round_trips_and_older_records_read_it_as_one():
    config = MapConfig().replace(phase_power=0.25)
    assert MapConfig.from_dict(config.to_dict()) == config
    older = MapConfig().to_dict()
    del older["phase_power"]
    assert uncalibrated_warning(older, MapConfig()) is None
    assert "phase_power: 1.0 -> 0.25" in uncalibrated_warning(older, config)


def test_the_joint_model_changes_only_which_phase_is_named_on_py4dstem_patterns():
    """py4DSTEM's own Bloch-wave Cu2O patterns with only the brighter disks (few disks: where the network is unsure)
    through the shipped joint model at phase_power 1 and 0.25: every phase's orientations are bit-identical, its
    ``corr`` is the same confidence times the new weight, the phase named is the larger ``corr``, some positions
    are named anew, and the user's peaks are untouched."""
    from py4dstem_transformer import TransformerOrientationMap
    from py4dstem_transformer.benchmarks import robustness as R

    cond = {c.name: c for c in R.CONDITIONS}["bright"]
    mapper = TransformerOrientationMap.pretrained("Cu+Cu2O", workers=1, calibrated_confidence=True)
    n = 100
    disks, _ = R.simulate_condition(mapper.crystals[1], cond, n, seed=2)
    bragg = R.pack_braggvectors(R.detector_pixels(disks), cond, R.believed_origin(cond, n, seed=2))
    before = [pl.data.copy() for row in bragg._v_uncal._pointlists for pl in row]
    maps = []
    for power in (1.0, 0.25):
        mapper.config = mapper.config.replace(phase_power=power)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # corr calibrated under the other setting
            maps.append(mapper.match_phases(bragg, progress_bar=False, neighbours=False, self_calibrate=False))
    one, quarter = maps
    np.testing.assert_array_equal(one.phase_probability, quarter.phase_probability)  # the network's, both times
    prob = one.phase_probability
    confidence = []
    for p in range(2):
        np.testing.assert_array_equal(one.orientation_maps[p].matrix, quarter.orientation_maps[p].matrix)
        w1, w4 = phase_weights(prob, 1.0)[..., p], phase_weights(prob, 0.25)[..., p]
        conf = np.where(w1 > 0, one.orientation_maps[p].corr[..., 0] / np.where(w1 > 0, w1, 1), 0.0)
        np.testing.assert_allclose(quarter.orientation_maps[p].corr[..., 0], conf * w4, rtol=1e-9, atol=1e-12)
        confidence.append(quarter.orientation_maps[p].corr[..., 0])
    matched = quarter.phase_index >= 0
    np.testing.assert_array_equal(quarter.phase_index[matched], np.argmax(confidence, 0)[matched])
    renamed = (one.phase_index != quarter.phase_index) & matched
    assert renamed.any()  # the setting did name some positions anew here (else the checks above say little)
    assert np.all(quarter.phase_index[renamed] == 1)  # ... and, on these Cu2O patterns, rightly
    now = [pl.data for row in bragg._v_uncal._pointlists for pl in row]
    assert all(np.array_equal(a, b) for a, b in zip(before, now))
