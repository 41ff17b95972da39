"""Every crystal system: the benchmark's crystals carry their point groups, and the loss, the map's symmetry
reduction and py4DSTEM's orix export use the crystal's own group (hexagonal and monoclinic checked here)."""

import contextlib
import io

import numpy as np
import pytest
import torch

from py4dstem_transformer.benchmarks.crystal_systems import MATERIALS, material_crystal
from py4dstem_transformer.core.rotations import random_rotations, rotation_about_z
from py4dstem_transformer.core.symmetry import check_structure_factor_invariance, point_group_rotations
from py4dstem_transformer.io.orientation_map import build_orientation_map, ensure_plan
from py4dstem_transformer.model.loss import orientation_loss

pytest.importorskip("pymatgen")

#: proper rotations of each Laue class: m-3m, 6/mmm, -3m, 4/mmm, mmm, 2/m
ORDER = {"Si": 24, "Mg": 12, "LiCoO2": 6, "TiO2": 8, "LiFePO4": 4, "Li2MnO3": 2}


@pytest.mark.parametrize("name", list(MATERIALS))
def test_each_material_has_its_crystal_systems_point_group(name):
    crystal = material_crystal(name)
    rotations = point_group_rotations(crystal)
    assert len(rotations) == ORDER[name]
    check_structure_factor_invariance(crystal, rotations.numpy())  # raises if one is no symmetry


@pytest.mark.parametrize("name", ["Mg", "Li2MnO3"])
def test_the_loss_is_blind_to_the_crystals_symmetry_and_only_to_it(name):
    s = point_group_rotations(material_crystal(name)).float()
    pred, true = random_rotations(64, seed=1).float(), random_rotations(64, seed=2).float()
    base = orientation_loss(pred, true, s, beam_flip_ambiguity=False)
    for op in s:
        torch.testing.assert_close(orientation_loss(pred, op @ true, s, beam_flip_ambiguity=False), base,
                                   atol=2e-4, rtol=0)
    # a quarter turn about the beam axis z is no symmetry of a hexagonal or monoclinic crystal
    other = torch.as_tensor(rotation_about_z(np.pi / 2)).float()
    assert (orientation_loss(pred, other @ true, s, beam_flip_ambiguity=False) - base).abs().max() > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Mg", "Li2MnO3"])
def test_map_reduction_and_orix_export_use_the_crystals_own_group(name, tmp_path):
    from orix.quaternion import Orientation

    crystal = material_crystal(name)
    with contextlib.redirect_stdout(io.StringIO()):
        crystal.calculate_structure_factors(2.0)
    ensure_plan(crystal, 300e3, 2.0)
    s = point_group_rotations(crystal).numpy()
    m = random_rotations(24, seed=3).numpy()
    om = build_orientation_map(crystal, m.reshape(4, 6, 1, 3, 3), np.ones((4, 6, 1)), s)
    reduced = om.matrix[:, :, 0].reshape(-1, 3, 3)
    used = np.einsum("nij,nkj->nik", reduced, m)  # reduced = S @ m (``mirror``: -(its beam) is in the triangle)
    distance = np.linalg.norm(used[:, None] - s[None], axis=(2, 3)).min(1)
    assert distance.max() < 1e-6  # always the same orientation, up to the crystal's own group
    # exported (reduced) and unreduced orientations, both made orix orientations the exporter's way, are the same
    # orientation under the map's group, if that group is the crystal's own, in the crystal's frame
    from py4dstem_transformer.io.orix_export import orientation_map_to_orix

    xmap = orientation_map_to_orix(crystal, om, transpose_xy=False)
    group = xmap.phases[xmap.phases.ids[0]].point_group
    assert group.proper_subgroup.size == len(s)
    angle = np.degrees(Orientation(xmap.rotations, symmetry=group).angle_with(as_orix(m, group)))
    assert angle.max() < 1e-3
    bare = np.degrees(Orientation(xmap.rotations).angle_with(as_orix(m, None)))  # without the group: far apart
    moved = distance_to_identity(used) > 1e-6
    assert moved.any() and bare[moved].min() > 1.0
    # py4DSTEM's own exporter takes orix's group of the same name: right for hexagonal; for a b-unique
    # monoclinic crystal orix's 2/m has its two-fold along z, not b (py4DSTEM 0.14.18; the reason for ours)
    raw = crystal.orientation_map_to_orix_CrystalMap(om, transpose_xy=False)
    raw_group = raw.phases[raw.phases.ids[0]].point_group
    raw_angle = np.degrees(Orientation(raw.rotations, symmetry=raw_group).angle_with(as_orix(m, raw_group)))
    if name == "Mg":
        assert raw_angle.max() < 1e-3
    else:
        assert raw_angle.max() > 90
    from orix import io as orix_io
    from py4dstem_transformer.io.orix_export import save_ang_file

    save_ang_file(crystal, tmp_path / "map.ang", om, transpose_xy=False)
    again = orix_io.load(str(tmp_path / "map.ang"))
    assert again.size == len(m) and np.allclose(again.rotations.data, xmap.rotations.data, atol=1e-4)


def as_orix(matrices, group):
    """orix Orientations of py4DSTEM matrices, the way py4DSTEM's orix exporter makes them."""
    from orix.quaternion import Orientation, Rotation
    from scipy.spatial.transform import Rotation as R

    rotation = Rotation.from_euler(R.from_matrix(np.transpose(matrices, (0, 2, 1))).as_euler("zxz"),
                                   direction="crystal2lab")
    return Orientation(rotation, symmetry=group) if group is not None else Orientation(rotation)


def distance_to_identity(matrices):
    return np.linalg.norm(matrices - np.eye(3), axis=(1, 2))


@pytest.mark.slow
def test_the_benchmark_trains_once_and_resumes(tmp_path, capsys):
    from py4dstem_transformer.benchmarks import crystal_systems

    args = ["--materials", "Mg", "--minutes", "0.05", "--num-zone-axes", "40", "--n", "6", "--acom-n", "2",
            "--sigma-excitation-error", "0.03", "--out", str(tmp_path), "--no-progress"]
    first = crystal_systems.main(args)
    (row,) = first["rows"]
    assert row["training"]["sigma_excitation_error"] == 0.03  # the beam selection asked for, recorded
    assert row["system"] == "hexagonal" and row["point_group_rotations"] == 12
    assert row["training"]["patterns"] == 40 * 8 and row["acom"]["n"] == 2 and row["ours"]["n"] == 6
    assert row["fast"]["n"] == 6 and 0 <= row["fast_on_acom_patterns"] <= 1  # mapped again under the 0.85 gate
    assert row["search_confidence"] == {"ours": 1.0, "fast": 0.85}
    model = tmp_path / "Mg.pt"
    from py4dstem_transformer.mapping.mapper import TransformerOrientationMap

    # calibrated under the recipe's gate, which the model's mappers then use by default
    assert TransformerOrientationMap(crystal_systems.material_crystal("Mg"), str(model)).config.search.confidence == 1.0
    stamp = model.stat().st_mtime_ns
    again = crystal_systems.main(args)  # resumed: the model is not trained again
    assert model.stat().st_mtime_ns == stamp and again["rows"][0]["training"] == row["training"]
    # the test patterns were simulated once, kept, and read back: the same figures
    assert (tmp_path / "Mg_test_6_0.npz").exists() and again["rows"][0]["simulate_s"] == row["simulate_s"]
    assert again["rows"][0]["ours"]["errors_strict"] == row["ours"]["errors_strict"]
    assert "| Mg (P6_3/mmc) | hexagonal | 12 |" in capsys.readouterr().out
    # a model calibrated under an older default (the score's excitation width) is calibrated again, weights kept
    from py4dstem_transformer.mapping.confidence import METADATA_KEY
    from py4dstem_transformer.model.model import OrientationModel

    older = OrientationModel.load(str(model))
    weights = {k: v.clone() for k, v in older.state_dict().items()}
    older.metadata[METADATA_KEY]["fitted_on"]["map_config"] = \
        crystal_systems.calibration_config().replace(sigma_excitation_error=0.04).to_dict()
    older.save(str(model))
    third = crystal_systems.main(args)
    assert "score.sigma_excitation_error: 0.04 -> 0.03" in third["rows"][0]["training"]["recalibrated"]
    now = TransformerOrientationMap(crystal_systems.material_crystal("Mg"), str(model))
    assert now.config == crystal_systems.calibration_config()
    assert all(torch.equal(v, weights[k]) for k, v in now.model.state_dict().items())
