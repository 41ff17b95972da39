"""Mixed training sets: one crystal under several experiments, concatenated with each part's directions kept apart."""

import numpy as np
import pytest

from conftest import make_cu, make_cu2o
from py4dstem_transformer.simulation.mixture import mix_training_sets, mixture_parts
from py4dstem_transformer.simulation.simulate import generate_training_set
from py4dstem_transformer.simulation.training_set import TrainingSet


@pytest.fixture(scope="module")
def parts():
    bloch = generate_training_set(make_cu(), angle_step_zone_axis=12, thickness=[30.0, 250.0], progress_bar=False)
    kinematic = generate_training_set(make_cu(), num_zone_axes=5, dynamical=False, precession_angle_degrees=0.5,
                                      seed=3, progress_bar=False)
    return bloch, kinematic


def test_mixed_set_holds_every_part_unchanged(parts):
    bloch, kinematic = parts
    copies = [ts.qx.copy() for ts in parts]
    mixed = mix_training_sets(parts)
    assert len(mixed) == len(bloch) + len(kinematic)
    for j, ts in enumerate(parts):
        start = 0 if j == 0 else len(bloch)
        for i in range(len(ts)):
            for a, b in zip(mixed.pattern(start + i, 0.3, True), ts.pattern(i, 0.3, True)):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(mixed.orientation(start + i), ts.orientation(i))
            # each pattern still points at its own beam direction
            np.testing.assert_array_equal(mixed.zone_axes[mixed.zone_axis_index[start + i]],
                                          ts.zone_axes[ts.zone_axis_index[i]])
    # the parts' directions never share an index, so a validation split holds out whole directions of each
    first = set(mixed.zone_axis_index[: len(bloch)].tolist())
    assert not first & set(mixed.zone_axis_index[len(bloch):].tolist())
    for ts, before in zip(parts, copies):
        np.testing.assert_array_equal(ts.qx, before)  # inputs untouched


def test_mixed_set_records_its_parts_and_round_trips(parts, tmp_path):
    mixed = mix_training_sets(parts)
    recorded = mixture_parts(mixed)
    assert [p["patterns"] for p in recorded] == [len(ts) for ts in parts]
    assert [p["config"]["dynamical"] for p in recorded] == [True, False]
    assert recorded[1]["config"]["precession_angle_degrees"] == 0.5
    assert [p["checksum"] for p in recorded] == [ts.checksum() for ts in parts]
    mixed.save(tmp_path / "mixed.h5")
    back = TrainingSet.load(tmp_path / "mixed.h5")
    assert mixture_parts(back) == recorded and back.config == mixed.config
    np.testing.assert_array_equal(back.offsets, mixed.offsets)
    assert mixture_parts(parts[0]) == []  # a set simulated in one go has no parts


def test_mixing_refuses_other_crystals_and_radial_ranges(parts):
    other_k = generate_training_set(make_cu(), num_zone_axes=3, dynamical=False, k_max=1.5, progress_bar=False)
    with pytest.raises(ValueError, match="k_max"):
        mix_training_sets([parts[0], other_k])
    cu2o = generate_training_set(make_cu2o(), num_zone_axes=3, dynamical=False, progress_bar=False)
    with pytest.raises(ValueError, match="lat_real|positions|numbers"):
        mix_training_sets([parts[0], cu2o])
    with pytest.raises(ValueError, match="at least one"):
        mix_training_sets([])
    with pytest.raises(TypeError, match="TrainingSet"):
        mix_training_sets([parts[0], "cu.h5"])


def test_trainer_reads_a_mixed_set(parts):
    from py4dstem_transformer.training.trainer import train

    mixed = mix_training_sets(parts)
    model = train(mixed, epochs=1, batch_size=8, progress_bar=False, val_fraction=0.2)
    assert model.metadata["training_set_size"] == len(mixed)
    assert model.history["step"] and np.isfinite(model.history["loss"]).all()


def test_sets_are_grouped_by_crystal_in_order_of_first_appearance(parts):
    from py4dstem_transformer.simulation.mixture import group_by_crystal

    cu2o = generate_training_set(make_cu2o(), num_zone_axes=3, dynamical=False, progress_bar=False)
    assert group_by_crystal([parts[0], cu2o, parts[1]]) == [[0, 2], [1]]
    assert group_by_crystal([cu2o, parts[0], cu2o, parts[1]]) == [[0, 2], [1, 3]]
    assert group_by_crystal(list(parts)) == [[0, 1]]
    with pytest.raises(TypeError, match="TrainingSet"):
        group_by_crystal([parts[0], "cu.h5"])


def test_train_command_mixes_each_crystal_into_one_phase(parts, tmp_path, capsys):
    """`train --mix` with files of two crystals: one phase per crystal, each the mixture of its files."""
    from py4dstem_transformer.cli import main
    from py4dstem_transformer.model.model import OrientationModel

    cu2o = generate_training_set(make_cu2o(), num_zone_axes=6, dynamical=False, progress_bar=False)
    files = [tmp_path / name for name in ("cu_bloch.h5", "cu2o.h5", "cu_kin.h5")]
    for ts, path in zip((parts[0], cu2o, parts[1]), files):
        ts.save(path)
    out = tmp_path / "joint.pt"
    assert main(["train", *map(str, files), "--mix", "--names", "Cu,Cu2O", "--epochs", "1", "--batch-size", "8",
                 "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"phase 0: {files[0]}, {files[2]}" in printed and f"phase 1: {files[1]}" in printed
    assert "  Cu at the end: median" in printed and "  Cu2O at the end: median" in printed  # each phase's validation
    model = OrientationModel.load(out)
    assert model.config.n_phases == 2 and [p["name"] for p in model.metadata["phases"]] == ["Cu", "Cu2O"]
    assert model.metadata["training_set_size"] == len(parts[0]) + len(parts[1]) + len(cu2o)
    with pytest.raises(SystemExit, match="two or more crystals"):
        main(["train", str(files[0]), str(files[2]), "--mix", "--names", "Cu", "--epochs", "1", "--out", str(out)])
