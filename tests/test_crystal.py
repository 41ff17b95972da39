"""CrystalIdentity: the one conversion between py4DSTEM Crystals and stored identities."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from py4dstem_transformer.io.compatibility import check_crystal_matches_model
from py4dstem_transformer.core.crystal import CrystalIdentity, crystal_from_metadata, private_copy
from py4dstem_transformer.simulation.simulator import example_crystal

PRETRAINED = sorted((Path(__file__).parents[1] / "py4dstem_transformer" / "pretrained").glob("*.pt"))


def _structure_factors(crystal, k_max=2.0):
    crystal.calculate_structure_factors(k_max)
    return np.asarray(crystal.g_vec_all), np.asarray(crystal.struct_factors_int)


@pytest.mark.parametrize("name", ["Cu", "Cu2O"])
def test_round_trip_through_the_stored_form_keeps_the_crystal(name):
    crystal = example_crystal(name)
    stored = json.loads(json.dumps(CrystalIdentity.from_crystal(crystal).to_dict()))  # what a file holds
    rebuilt = CrystalIdentity.from_dict(stored).to_crystal()
    for field in ("positions", "numbers", "lat_real", "occupancy"):
        np.testing.assert_array_equal(getattr(rebuilt, field), getattr(crystal, field))
    for ours, theirs in zip(_structure_factors(rebuilt), _structure_factors(example_crystal(name))):
        np.testing.assert_array_equal(ours, theirs)
    assert CrystalIdentity.from_crystal(rebuilt) == CrystalIdentity.from_crystal(crystal)


def test_missing_occupancy_stays_none_and_means_fully_occupied():
    identity = CrystalIdentity.from_crystal(example_crystal("Cu2O"))
    bare = CrystalIdentity(identity.positions, identity.numbers, identity.lat_real)
    stored = bare.to_dict()
    assert stored["occupancy"] is None
    assert CrystalIdentity.from_dict(stored).occupancy is None
    assert CrystalIdentity.from_dict({k: v for k, v in stored.items() if k != "occupancy"}).occupancy is None
    np.testing.assert_array_equal(bare.to_crystal().occupancy, np.ones(6))
    assert bare.filled().occupancy == (1.0,) * 6 and bare.filled().numbers == bare.numbers


def test_partial_occupancy_survives_and_scales_the_intensities():
    cu = example_crystal("Cu")
    identity = CrystalIdentity(cu.positions, cu.numbers, cu.lat_real, np.full(4, 0.9))
    rebuilt = CrystalIdentity.from_dict(identity.to_dict()).to_crystal()
    np.testing.assert_array_equal(rebuilt.occupancy, np.full(4, 0.9))
    (g, partial), (g_full, full) = _structure_factors(rebuilt), _structure_factors(example_crystal("Cu"))
    np.testing.assert_array_equal(g, g_full)
    np.testing.assert_allclose(partial, 0.81 * full, rtol=1e-5)  # |F|^2 scales with occupancy^2


def test_private_copy_is_equal_but_shares_nothing():
    cu = example_crystal("Cu")
    copy = private_copy(cu)
    assert copy is not cu and CrystalIdentity.from_crystal(copy) == CrystalIdentity.from_crystal(cu)
    copy.positions[0, 0] = 0.3
    assert cu.positions[0, 0] == 0.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="4 positions but 3 atomic numbers"):
        CrystalIdentity(np.zeros((4, 3)), [29] * 3, np.eye(3))


@pytest.mark.parametrize("path", PRETRAINED, ids=lambda p: p.name)
def test_shipped_models_read_back_in_the_same_stored_form(path):
    metadata = torch.load(path, weights_only=True, map_location="cpu")["metadata"]
    for phase in metadata.get("phases", [metadata]):
        identity = CrystalIdentity.from_dict(phase["crystal"])
        assert identity.to_dict() == phase["crystal"]
        crystal = crystal_from_metadata(phase)
        identity.check(crystal)
        np.testing.assert_array_equal(crystal.lat_real, np.asarray(phase["crystal"]["lat_real"]))


def test_check_names_what_differs():
    cu = example_crystal("Cu")
    from py4DSTEM.process.diffraction import Crystal

    metadata = {"crystal": CrystalIdentity.from_crystal(cu).to_dict(), "accel_voltage": 300e3}
    check_crystal_matches_model(Crystal(cu.positions, 29, 3.62), metadata)  # a refined lattice is fine
    check_crystal_matches_model(cu, {})  # a bare model has nothing to check
    with pytest.raises(ValueError, match="does not match the cell"):
        check_crystal_matches_model(Crystal(cu.positions, 29, 3.9), metadata)
    with pytest.raises(ValueError, match="other Cartesian axes"):
        check_crystal_matches_model(Crystal(cu.positions, 29, cu.lat_real[[1, 0, 2]]), metadata)
    with pytest.raises(ValueError, match=r"atoms \(Z = \[30\]\) differ from the model's \(Z = \[29\]\)"):
        check_crystal_matches_model(Crystal(cu.positions, 30, 3.615), metadata)
    cu.setup_diffraction(200e3)
    check_crystal_matches_model(cu, metadata)  # the voltage is checked apart (check_voltage)


def test_voltage_comes_from_the_crystal_then_the_keyword_then_the_model():
    from py4dstem_transformer.io.compatibility import resolve_voltage

    bare, cu = example_crystal("Cu"), example_crystal("Cu")
    assert resolve_voltage([bare], None, 300e3, 100e3) == (300e3, "the model (its training voltage)")
    assert resolve_voltage([bare], None, None, 100e3) == (100e3, "the default")
    assert resolve_voltage([bare], 200e3, 300e3, 100e3) == (200e3, "accel_voltage=")
    cu.setup_diffraction(80e3)
    assert resolve_voltage([cu, bare], None, 300e3, 100e3) == (80e3, "the crystal (crystal.accel_voltage)")
    assert resolve_voltage([cu], 80.2e3, 300e3, 100e3)[0] == 80e3  # the same voltage within 1%
    with pytest.raises(ValueError, match=r"accel_voltage=200000 \(200 kV\) was passed but the crystal is set up for 80 kV"):
        resolve_voltage([cu], 200e3, 300e3, 100e3)
    other = example_crystal("Cu")
    other.setup_diffraction(200e3)
    with pytest.raises(ValueError, match="different voltages"):
        resolve_voltage([cu, other], None, 300e3, 100e3)
    with pytest.raises(ValueError, match="looks like kV; give volts"):
        resolve_voltage([bare], 200, 300e3, 100e3)
    with pytest.raises(ValueError, match="accel_voltage must be positive"):
        resolve_voltage([bare], -3e5, 300e3, 100e3)


def test_only_voltages_a_measurement_covers_are_accepted():
    from py4dstem_transformer.io.compatibility import VALIDATION_KEY, check_voltage

    assert check_voltage(200e3, {}) == ""  # a bare model
    unmeasured = {"accel_voltage": 300e3}
    assert "not measured at other voltages" in check_voltage(301e3, unmeasured)
    with pytest.raises(ValueError, match="200 kV but the model was trained at 300 kV, not measured") as info:
        check_voltage(200e3, unmeasured)
    assert "generate_training_set(accel_voltage=200000)" in str(info.value)
    measured = {"accel_voltage": 300e3,
                VALIDATION_KEY: {"kv": [60.0, 80.0, 300.0], "strict": [0.5, 0.9, 0.91], "range": [80e3, 300e3]}}
    assert "measured to map 80-300 kV as well as 300 kV" in check_voltage(200e3, measured)
    with pytest.raises(ValueError, match="91% at 300 kV, 50% at 60 kV"):
        check_voltage(60e3, measured)
