"""Joint phase + orientation: training sets of several crystals, per-phase symmetry in the loss, a
model with a phase head, and ``match_phases`` returning native OrientationMaps per crystal."""

import numpy as np
import pytest
import torch
from conftest import KinematicSet, kinematic_scan, make_cu, make_cu2o, make_mg

from py4dstem_transformer.mapping.confidence import phase_weights
from py4dstem_transformer.model.loss import orientation_loss
from py4dstem_transformer.simulation.phases import PhaseTrainingSet, formula, padded_symmetry, phase_symmetries
from py4dstem_transformer.core.symmetry import point_group_rotations


@pytest.fixture(scope="module")
def two_sets():
    return KinematicSet(1500, seed=1, make=make_cu), KinematicSet(1500, seed=2, make=make_cu2o)


@pytest.fixture(scope="module")
def joint(two_sets):
    """A tiny Cu + Cu2O model, ~20 s of training."""
    from py4dstem_transformer.training.augment import AugmentConfig
    from py4dstem_transformer.model.model import ModelConfig
    from py4dstem_transformer.training.trainer import train

    both = PhaseTrainingSet(two_sets, names=["Cu", "Cu2O"])
    light = AugmentConfig(p_drop_weak=0.2, p_drop_random=0.1, p_jitter=0.3, jitter_max=0.005, p_spurious=0.1)
    return train(both, epochs=20, batch_size=128, lr=3e-3, warmup=50, val_fraction=0.1, seed=0, progress_bar=False,
                 model_config=ModelConfig(d_model=48, n_layers=2, n_heads=4, d_ff=96, k_max=2.1, n_phases=2),
                 augment_config=light, val_every=100, precision="fp32")


def test_concatenation_keeps_every_pattern_and_labels_its_phase(two_sets):
    a, b = two_sets
    both = PhaseTrainingSet([a, b], names=["Cu", "Cu2O"])
    assert len(both) == len(a) + len(b)
    assert np.array_equal(both.phase, np.r_[np.zeros(len(a)), np.ones(len(b))])
    i = len(a) + 17  # pattern 17 of the second set
    lo, hi = both.offsets[i], both.offsets[i + 1]
    np.testing.assert_array_equal(both.qx[lo:hi], b.qx[b.offsets[17]:b.offsets[18]])
    np.testing.assert_array_equal(both.orientation_matrices[i], b.orientation_matrices[17])
    # beam directions of different phases never share a zone-axis index (the validation split is by zone axis)
    assert not set(both.zone_axis_index[both.phase == 0]) & set(both.zone_axis_index[both.phase == 1])
    assert "Cu2O: 1500" in repr(both)


def test_incompatible_sets_are_refused(two_sets):
    a, b = two_sets
    with pytest.raises(ValueError, match="at least two"):
        PhaseTrainingSet([a])
    with pytest.raises(ValueError, match="distinct name"):
        PhaseTrainingSet([a, b], names=["Cu", "Cu"])
    other = KinematicSet(5, seed=3, make=make_cu2o, k_max=1.5)
    with pytest.raises(ValueError, match="k_max"):
        PhaseTrainingSet([a, other], names=["Cu", "Cu2O"])


def test_formula_names_phases():
    assert formula([29] * 4) == "Cu"
    assert formula([29] * 4 + [8] * 2) == "Cu2O"
    assert formula([13] * 4 + [8] * 6) == "Al2O3"


def test_loss_uses_each_samples_own_point_group():
    """An operation of Cu's group (m-3m, 24) that hcp Mg's (6/mmm, 12) lacks costs nothing for a Cu
    sample and its full angle for a Mg sample with the same matrices."""
    cu, mg = point_group_rotations(make_cu()).double(), point_group_rotations(make_mg()).double()
    groups = padded_symmetry([cu, mg])
    assert groups.shape == (2, 24, 3, 3)
    in_mg = lambda s: any(torch.allclose(s, t, atol=1e-9) for t in mg)  # noqa: E731
    s = next(s for s in cu if not in_mg(s))  # e.g. a 3-fold axis
    m = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    m = m * torch.sign(torch.det(m))
    pred, true = (s @ m)[None].repeat(2, 1, 1), m[None].repeat(2, 1, 1)
    loss = orientation_loss(pred, true, groups, beam_flip_ambiguity=False, phase=torch.tensor([0, 1]))
    assert loss[0] < 1e-6
    expected = min(torch.arccos(((torch.trace(s @ t.T) - 1) / 2).clamp(-1, 1)) for t in mg)  # angle to nearest Mg op
    assert abs(loss[1] - expected) < 1e-6 and loss[1] > 0.5


def test_phase_symmetries_come_from_each_crystal(two_sets):
    groups = phase_symmetries(two_sets)
    assert [len(g) for g in groups] == [24, 24]


@pytest.mark.slow
def test_joint_model_learns_phase_and_orientation(joint, two_sets):
    """Held-out zone axes: phase accuracy far above chance (50%), orientation well under chance (~35 deg)."""
    h = joint.history
    assert joint.config.n_phases == 2
    assert h["val_phase_accuracy"][-1] > 0.9
    assert h["val_median_deg"][-1] < 15  # chance: ~40 deg
    assert [p["name"] for p in joint.metadata["phases"]] == ["Cu", "Cu2O"]
    assert "crystal" not in joint.metadata and joint.metadata["accel_voltage"] == 300e3
    # each phase validated on its own: both learned, and the overall median lies between theirs
    by_phase = h["val_median_deg_by_phase"]
    assert len(by_phase) == len(h["val_step"]) and all(len(v) == 2 for v in by_phase)
    assert max(by_phase[-1]) < 20 and min(by_phase[-1]) <= h["val_median_deg"][-1] <= max(by_phase[-1])
    assert all(0.0 <= f <= 1.0 for f in h["val_within_5deg_by_phase"][-1])
    import matplotlib.pyplot as plt
    from py4dstem_transformer.training.trainer import plot_history

    fig, (_, ax_val) = plot_history(joint, returnfig=True)
    assert [line.get_label() for line in ax_val.get_lines()] == ["all", "Cu", "Cu2O"]
    plt.close(fig)


def test_validation_by_phase_splits_the_figures_by_true_phase():
    from py4dstem_transformer.training.trainer import validation_by_phase

    angle = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0])
    phase = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    out = validation_by_phase(angle, phase, 3)
    assert out["val_median_deg_by_phase"][:2] == [2.0, 10.0]  # torch's median: the lower of the two middle values
    assert out["val_within_5deg_by_phase"][:2] == [1.0, 0.25]
    assert all(np.isnan(v[2]) for v in out.values())  # no pattern of phase 2 in this validation set


@pytest.mark.slow
def test_a_list_of_sets_trains_the_same_as_a_phase_training_set(two_sets):
    from py4dstem_transformer.model.model import ModelConfig
    from py4dstem_transformer.training.trainer import train

    kw = dict(epochs=None, max_minutes=None, batch_size=64, progress_bar=False, val_fraction=0.1, seed=3,
              model_config=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, n_phases=2), precision="fp32")
    small = [KinematicSet(60, seed=5, make=make_cu), KinematicSet(60, seed=6, make=make_cu2o)]
    a = train(small, **{**kw, "epochs": 1})
    b = train(PhaseTrainingSet(small), **{**kw, "epochs": 1})
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="n_phases"):
        train(small, **{**kw, "epochs": 1, "model_config": ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32)})


def _two_phase_scan(two_sets, side=10):
    """A side x side scan: the first half of the positions Cu patterns, the rest Cu2O (held-out
    orientations: the last patterns of each set, which the small model saw as training data at
    other in-plane angles, so this checks the mapping plumbing, not generalisation)."""
    from types import SimpleNamespace

    a, b = two_sets
    n = side * side
    half = n // 2
    pick = [(a, len(a) - 1 - i) for i in range(half)] + [(b, len(b) - 1 - i) for i in range(n - half)]
    qx, qy, inten, counts, mats = [], [], [], [], []
    for s, i in pick:
        lo, hi = s.offsets[i], s.offsets[i + 1]
        qx.append(s.qx[lo:hi]); qy.append(s.qy[lo:hi]); inten.append(s.intensity[lo:hi]); counts.append(hi - lo)
        mats.append(s.orientation_matrices[i])
    flat = SimpleNamespace(qx=np.concatenate(qx), qy=np.concatenate(qy), intensity=np.concatenate(inten),
                           offsets=np.r_[0, np.cumsum(counts)])
    phase = np.r_[np.zeros(half, int), np.ones(n - half, int)].reshape(side, side)
    return kinematic_scan(flat, (side, side)), phase, np.array(mats).reshape(side, side, 3, 3)


@pytest.mark.slow
def test_match_phases_gives_native_maps_per_crystal(joint, two_sets):
    from py4DSTEM.process.diffraction import CrystalPhase

    from py4dstem_transformer import TransformerOrientationMap
    from py4dstem_transformer.io.phase_map import PhaseMap

    scan, phase, _ = _two_phase_scan(two_sets)
    crystals = [make_cu(), make_cu2o()]
    mapper = TransformerOrientationMap(crystals, joint)
    result = mapper.match_phases(scan, progress_bar=False)
    assert isinstance(result, PhaseMap) and result.names == ["Cu", "Cu2O"]
    assert result.phase_probability.shape == (10, 10, 2)
    np.testing.assert_allclose(result.phase_probability.sum(-1), 1, atol=1e-5)
    assert np.mean(result.phase_index == phase) > 0.9
    for crystal, om, p in zip(crystals, result.orientation_maps, range(2)):
        assert crystal.orientation_map is om and om.matrix.shape == (10, 10, 1, 3, 3)
        weight = phase_weights(result.phase_probability, mapper.config.phase_power)[:, :, p]
        assert np.all(om.corr[:, :, 0] <= weight + 1e-9)  # corr = confidence x phase weight
    # py4DSTEM's own phase map from the correlation scores agrees with ours
    cp = result.crystal_phase()
    assert isinstance(cp, CrystalPhase) and cp.phase_weights.shape == (10, 10, 2)
    cp.plot_dominant_phase(use_correlation_scores=True, phase_colors=np.array([[1.0, 0, 0], [0, 0, 1.0]]))
    shown = cp.phase_rgb.sum(-1) > 0  # py4DSTEM dims each position by its reliability (best - second corr)
    assert shown.mean() > 0.9
    dominant = np.argmax(cp.phase_rgb[..., [0, 2]], -1)
    assert np.array_equal(dominant[shown], result.phase_index[shown])
    fig, axes = result.plot(returnfig=True)
    assert len(axes) == 3
    # match_orientations on a multi-phase model: the list of OrientationMaps
    maps = mapper.match_orientations(scan, progress_bar=False)
    assert isinstance(maps, list) and len(maps) == 2


@pytest.mark.slow
def test_the_wrong_number_of_crystals_is_refused(joint):
    from py4dstem_transformer import TransformerOrientationMap

    with pytest.raises(ValueError, match="2 phase"):
        TransformerOrientationMap(make_cu(), joint)
    with pytest.raises(ValueError, match="does not match"):
        TransformerOrientationMap([make_cu2o(), make_cu()], joint)


def test_init_weights_copies_a_single_phase_model_into_a_joint_one(two_sets):
    """Fine-tuning start: every weight but the new phase head comes from the source model."""
    from py4dstem_transformer.model.model import ModelConfig, OrientationModel
    from py4dstem_transformer.training.trainer import train

    small = [KinematicSet(40, seed=7, make=make_cu), KinematicSet(40, seed=8, make=make_cu2o)]
    arch = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, k_max=2.1)
    source = OrientationModel(ModelConfig(**arch))
    joint = train(small, epochs=0, progress_bar=False, val_fraction=0.1, init_weights=source,
                  model_config=ModelConfig(**arch, n_phases=2))
    src = source.state_dict()
    for name, value in joint.state_dict().items():
        if name.startswith("phase_head."):
            assert name not in src
        else:
            torch.testing.assert_close(value, src[name])
    with pytest.raises(ValueError, match="architecture"):
        train(small, epochs=0, progress_bar=False, init_weights=OrientationModel(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=32)),
              model_config=ModelConfig(**arch, n_phases=2))


def test_formula_without_pymatgen_ends_each_atomic_number_with_an_underscore(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pymatgen.core.periodic_table", None)  # import fails: pymatgen is missing
    assert formula([29] * 4 + [8] * 2) == "Z8_Z29_2"
