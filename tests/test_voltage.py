"""Voltage and precession are inputs: the physics follows py4DSTEM's at any voltage and precession angle, the
mapper takes the voltage from where py4DSTEM keeps it, and refuses only what a measurement does not cover."""

import contextlib
import io

import numpy as np
import pytest
import torch

from py4dstem_transformer.core.kinematics import Reflections, simulate_disks
from py4dstem_transformer.core.rotations import random_rotations, symmetry_min_angle
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.mapping.refine import refine_orientations
from py4dstem_transformer.mapping.voltages import accepted_range

from conftest import make_cu, perturb

K_MAX = 2.0


def py4dstem_patterns(voltage: float, precession, matrices):
    """py4DSTEM's kinematic patterns (000 dropped, |q| <= K_MAX): list of (k, 3) ``(qx, qy, I / max |F|^2)``."""
    cu = make_cu()
    with contextlib.redirect_stdout(io.StringIO()):
        cu.setup_diffraction(voltage)
        cu.calculate_structure_factors(K_MAX, tol_structure_factor=1e-4)
    out = []
    for m in matrices:
        d = cu.generate_diffraction_pattern(orientation_matrix=m, sigma_excitation_error=0.02, tol_intensity=0.0,
                                            k_max=K_MAX, precession_angle_degrees=precession).data
        d = d[((d["h"] != 0) | (d["k"] != 0) | (d["l"] != 0)) & (np.hypot(d["qx"], d["qy"]) <= K_MAX)]
        out.append(np.stack([d["qx"], d["qy"], d["intensity"] / cu.struct_factors_int.max()], 1))
    return out


def log_intensity_errors(reflections, matrices, patterns):
    """|ln(ours / py4DSTEM's)| of py4DSTEM's disks brighter than 1% (the constant normalisation offset taken out),
    and the number of them we do not place within 1e-3 1/A."""
    errors, missing = [], 0
    for m, ref in zip(matrices, patterns):
        disks, mask = simulate_disks(torch.as_tensor(m[None]).float(), reflections, 0.02, 5000, k_max=K_MAX)
        ours = disks[0][mask[0]].numpy()
        strong = ref[ref[:, 2] > 1e-2]
        d = np.linalg.norm(strong[:, None, :2] - ours[None, :, :2], axis=-1)
        near = d.min(1) < 1e-3
        missing += int((~near).sum())
        errors += list(np.log(ours[d.argmin(1)[near], 2] / strong[near, 2]))
    errors = np.asarray(errors)
    return np.abs(errors - np.median(errors)), missing


@pytest.mark.parametrize("voltage", [80e3, 200e3])
def test_disks_at_other_voltages_are_py4dstems(voltage):
    matrices = random_rotations(12, seed=4).numpy()
    errors, missing = log_intensity_errors(Reflections.from_crystal(make_cu(), K_MAX, voltage), matrices,
                                           py4dstem_patterns(voltage, None, matrices))
    assert missing == 0 and errors.max() < 1e-3
    # the 300 kV physics does not give them: other disks are excited at 80 kV
    errors_300, missing_300 = log_intensity_errors(Reflections.from_crystal(make_cu(), K_MAX, 300e3), matrices,
                                                   py4dstem_patterns(voltage, None, matrices))
    assert missing_300 > 0 or errors_300.max() > 0.1


def test_precession_follows_py4dstems_cycle_average():
    matrices = random_rotations(16, seed=5).numpy()
    for angle, limit in ((1.0, 0.15), (2.0, 0.4)):
        patterns = py4dstem_patterns(300e3, angle, matrices)
        told = Reflections.from_crystal(make_cu(), K_MAX, 300e3, precession_angle_degrees=angle)
        assert told.precession == pytest.approx(np.deg2rad(angle))
        errors, missing = log_intensity_errors(told, matrices, patterns)
        untold, _ = log_intensity_errors(Reflections.from_crystal(make_cu(), K_MAX, 300e3), matrices, patterns)
        assert missing == 0 and errors.max() < limit
        assert np.percentile(errors, 90) < 0.3 * np.percentile(untold, 90)  # the model of precession is what helps


def test_refinement_converges_on_precessed_patterns():
    matrices = random_rotations(40, seed=6).numpy()
    patterns = py4dstem_patterns(300e3, 2.0, matrices)
    n = max(len(p) for p in patterns)
    observed, mask = torch.zeros(len(patterns), n, 3), torch.zeros(len(patterns), n, dtype=torch.bool)
    for i, p in enumerate(patterns):
        brightest = p[:, 2].max()
        observed[i, :len(p)] = torch.as_tensor(p / [1, 1, brightest]).float()
        mask[i, :len(p)] = True
    true = torch.as_tensor(matrices)
    start = perturb(true, 0.5, 1.5, seed=2).float()
    told = Reflections.from_crystal(make_cu(), K_MAX, 300e3, precession_angle_degrees=2.0)
    refined = refine_orientations(start, observed, mask, told, k_max=K_MAX, r_min=0.0)
    err = torch.rad2deg(symmetry_min_angle(refined.double(), true, point_group_rotations(make_cu())))
    assert float(err.median()) < 0.02 and float(err.max()) < 0.2


def test_the_accepted_range_is_the_unbroken_run_around_the_training_voltage():
    kv = [30.0, 60.0, 80.0, 200.0, 300.0]
    strict = [[0.97], [0.60], [0.95], [0.93], [0.94]]  # 60 kV fails: 30 kV is not reached past it
    assert accepted_range(kv, strict, 300.0, 0.02) == (80.0, 300.0)
    two_phases = [[0.9, 0.9], [0.9, 0.9], [0.9, 0.85], [0.9, 0.9], [0.9, 0.9]]  # one phase falls at 80 kV
    assert accepted_range(kv, two_phases, 300.0, 0.02) == (200.0, 300.0)
    assert accepted_range(kv, strict, 300.0, 0.5) == (30.0, 300.0)


def test_mapper_reads_the_voltage_and_refuses_what_was_not_measured():
    from py4dstem_transformer import TransformerOrientationMap
    from py4dstem_transformer.core.crystal import crystal_from_metadata
    from py4dstem_transformer.io.compatibility import VALIDATION_KEY
    from py4dstem_transformer.pretrained import load_pretrained

    model = load_pretrained("Cu")
    low, high = model.metadata[VALIDATION_KEY]["range"]
    assert low <= 80e3 and high >= 300e3  # the shipped model was measured across the common voltages
    mapper = TransformerOrientationMap(crystal_from_metadata(model.metadata), model, accel_voltage=80e3,
                                       precession_angle_degrees=1.0)
    assert "80 kV, from accel_voltage=" in mapper.voltage_note and "precession 1 deg" in mapper.voltage_note
    wavelength = Reflections.from_crystal(make_cu(), K_MAX, 80e3).wavelength
    assert mapper.phases[0].reflections.wavelength == pytest.approx(wavelength)
    assert mapper.phases[0].reflections.precession == pytest.approx(np.deg2rad(1.0))
    cu = crystal_from_metadata(model.metadata)
    cu.setup_diffraction(200e3)
    mapper = TransformerOrientationMap(cu, model)
    assert mapper.accel_voltage == 200e3 and "from the crystal" in mapper.voltage_note
    cu.setup_diffraction(0.5 * low)
    with pytest.raises(ValueError, match=f"{0.5 * low / 1e3:g} kV but the model was measured to map"):
        TransformerOrientationMap(cu, model)
    with pytest.raises(ValueError, match="precession_angle_degrees must be between 0 and 10"):
        TransformerOrientationMap(crystal_from_metadata(model.metadata), model, precession_angle_degrees=-1)


def test_simulate_from_a_cif(tmp_path):
    """``simulate --cif`` reads the CIF a user has (written here from a py4DSTEM crystal with pymatgen)."""
    pytest.importorskip("pymatgen")
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    from py4dstem_transformer.cli import main
    from py4dstem_transformer.core.crystal import CrystalIdentity, crystal_from_cif
    from py4dstem_transformer.simulation.training_set import TrainingSet

    al = Structure(Lattice.cubic(4.05), ["Al"] * 4, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    path = tmp_path / "al.cif"
    path.write_text(str(CifWriter(al)))
    crystal = crystal_from_cif(path)
    assert sorted(crystal.numbers.tolist()) == [13] * 4 and np.allclose(np.diag(crystal.lat_real), 4.05)
    out = tmp_path / "al.h5"
    assert main(["simulate", "--cif", str(path), "--out", str(out), "--num-zone-axes", "3", "--thickness", "100",
                 "--no-progress"]) == 0
    stored = TrainingSet.load(out).crystal()
    CrystalIdentity.from_crystal(crystal).check(stored, lattice_rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="no CIF file"):
        crystal_from_cif(tmp_path / "missing.cif")
    (tmp_path / "bad.cif").write_text("data_nothing\n")
    with pytest.raises(ValueError, match="could not read a crystal structure from"):
        crystal_from_cif(tmp_path / "bad.cif")


def test_validate_voltages_stores_the_measured_range(tmp_path, capsys):
    from py4dstem_transformer.cli import main
    from py4dstem_transformer.io.compatibility import VALIDATION_KEY
    from py4dstem_transformer.model.model import OrientationModel
    from py4dstem_transformer.pretrained import load_pretrained

    out = tmp_path / "cu.pt"
    assert main(["validate-voltages", "Cu", "--out", str(out), "--kv", "80", "--n", "12", "--tolerance", "1.0",
                 "--no-progress"]) == 0
    validation = OrientationModel.load(out).metadata[VALIDATION_KEY]
    assert validation["kv"] == [80.0, 300.0] and validation["n"] == 12 and len(validation["strict_per_phase"]) == 2
    assert validation["range"] == [80e3, 300e3]  # a tolerance of 1 accepts any accuracy: the range is all measured
    assert all(0.0 <= s <= 1.0 for s in validation["strict"])
    assert "saved" in capsys.readouterr().out
    shipped = load_pretrained("Cu")
    assert OrientationModel.load(out).state_dict().keys() == shipped.state_dict().keys()
