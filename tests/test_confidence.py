"""Calibrated confidence: fitting, storage in the model file, use by the mapper, end to end."""

import numpy as np
import pytest
import torch

from py4dstem_transformer.evaluation.compare import roc_auc
from py4dstem_transformer.mapping.calibrate import attach_calibration, calibrate
from py4dstem_transformer.mapping.confidence import (Calibration, confidence_features,
                                             fit_calibration)

from conftest import make_cu


def synthetic(n, seed):
    """Scores, alternatives, disk counts and labels where being right depends on margin and disk count."""
    g = torch.Generator().manual_seed(seed)
    score = 0.5 + 0.5 * torch.rand(n, generator=g)
    alternative = score - 0.3 * torch.rand(n, generator=g)
    disks = torch.randint(3, 40, (n,), generator=g)
    logit = 20 * (score - alternative - 0.08) + 0.3 * (disks - 12) + torch.randn(n, generator=g)
    return score, alternative, disks, logit > 0


def test_fit_learns_a_flag_better_than_the_raw_score():
    s, a, n, right = synthetic(3000, 0)
    cal = fit_calibration(confidence_features(s, a, n), right)
    s, a, n, right = synthetic(3000, 1)  # fresh data
    p = cal.probability(confidence_features(s, a, n))
    # calibrated within each fifth of the patterns ranked by p, not only on average: measured gaps <= 0.032;
    # 0.08 is ~4 binomial standard errors of the least certain fifth (600 patterns, 27% right)
    for fifth in p.argsort().chunk(5):
        assert abs(float(p[fifth].mean()) - float(right[fifth].float().mean())) < 0.08
    auc = roc_auc(p.numpy(), right.numpy())
    assert auc > 0.9 and auc > roc_auc(s.numpy(), right.numpy()) + 0.1
    assert abs(float(p.mean()) - float(right.float().mean())) < 0.05  # calibrated, not just ranked


def test_fit_refuses_labels_of_one_kind():
    s, a, n, _ = synthetic(100, 0)
    with pytest.raises(ValueError, match="both right and wrong"):
        fit_calibration(confidence_features(s, a, n), torch.ones(100, dtype=torch.bool))


@pytest.mark.slow
def test_calibration_survives_a_weights_only_round_trip(tmp_path, trained):
    s, a, n, right = synthetic(500, 2)
    cal = fit_calibration(confidence_features(s, a, n), right, steps=200, fitted_on={"patterns": 500})
    model = type(trained)(trained.config, dict(trained.metadata))
    model.load_state_dict(trained.state_dict())
    attach_calibration(model, cal)
    model.save(tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # plain numbers only
    back = Calibration.from_metadata(raw["metadata"])
    assert back == cal
    assert torch.equal(back.probability(confidence_features(s, a, n)), cal.probability(confidence_features(s, a, n)))
    assert "confidence_calibration" not in trained.metadata  # the original model is untouched


def test_mapper_reports_the_calibrated_probability():
    from py4dstem_transformer.pretrained import load_pretrained
    from py4dstem_transformer.mapping.mapper import TransformerOrientationMap
    from py4dstem_transformer.simulation.scan import simulate_orientations
    from py4dstem_transformer.core.rotations import random_rotations
    from py4dstem_transformer.model.tokens import braggvectors_to_tokens

    model = load_pretrained("Cu")
    assert "confidence_calibration" in model.metadata  # the shipped model is calibrated
    crystal = make_cu()
    m = random_rotations(24, seed=5).numpy()
    bragg, truth = simulate_orientations([crystal], m, 200.0, seed=6, progress_bar=False)
    mapper = TransformerOrientationMap(crystal, model)
    om = mapper.match_orientations(bragg, progress_bar=False)
    raw = TransformerOrientationMap(crystal, model, calibrated_confidence=False).match_orientations(bragg, progress_bar=False)
    tokens = braggvectors_to_tokens(bragg, mapper.token_config)
    mapped = mapper.map_tokens(tokens, 1)
    np.testing.assert_allclose(raw.corr[0, :, 0], mapped.score[:, 0, 0], atol=1e-6)
    expected = mapper.calibration.probability({k: torch.as_tensor(v[:, 0, 0]) for k, v in mapped.features.items()})
    np.testing.assert_allclose(om.corr[0, :, 0], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(om.matrix, raw.matrix)  # the confidence changes nothing else


@pytest.mark.slow
def test_calibrate_end_to_end_on_simulated_patterns():
    from py4dstem_transformer.pretrained import load_pretrained
    from py4dstem_transformer.mapping.mapper import TransformerOrientationMap

    mapper = TransformerOrientationMap(make_cu(), load_pretrained("Cu"))
    shipped, phases = mapper.calibration, mapper.phases
    cal = calibrate(mapper, n=160, seed=4321, progress_bar=False)
    assert mapper.calibration is shipped and mapper.phases is phases  # the mapper is not changed
    assert cal.fitted_on["passes"] == 2 and cal != shipped
    assert cal.fitted_on["map_config"] == mapper.config.to_dict()  # the settings it was fitted under
    assert cal.fitted_on["patterns"] == 160 and 0.5 < cal.fitted_on["fraction_right"] < 1
    assert cal.fitted_on["auc_on_fit_set"] > 0.7  # the mapper's own features do flag its errors
    # deterministic: the same model, settings and seed give the same calibration to the bit (its first pass maps
    # under the calibration the model carries, so a model calibrated otherwise starts elsewhere)
    assert calibrate(mapper, n=160, seed=4321, progress_bar=False) == cal


@pytest.mark.slow
def test_the_calibrate_command_calibrates_under_the_settings_asked_for(tmp_path):
    """``calibrate --sigma-excitation-error 0.05 --search-confidence 1 --intensity-noise-power 0.5
    --polish-sparse-disks 8`` on the shipped model (calibrated under 0.03, 0.95, 0 and 12): the file records those
    settings (and keeps the model's others: the polish's noise floor, the lattice check's 0.03) and its mappers use
    them without a warning."""
    import warnings

    from py4dstem_transformer.cli import main
    from py4dstem_transformer.mapping.config import MapConfig
    from py4dstem_transformer.mapping.mapper import TransformerOrientationMap

    out = tmp_path / "cu.pt"
    assert main(["calibrate", "Cu", "--out", str(out), "--n", "120", "--seed", "4322", "--passes", "1",
                 "--sigma-excitation-error", "0.05", "--search-confidence", "1", "--intensity-noise-power", "0.5",
                 "--polish-sparse-disks", "8", "--no-progress"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapper = TransformerOrientationMap(make_cu(), str(out))
    assert mapper.config == MapConfig().replace(sigma_excitation_error=0.05, search_confidence=1.0,
                                                intensity_noise_power=0.5, polish_sparse_disks=8,
                                                polish_min_position_noise=0.0021,  # the last two: the model's own
                                                search_off_lattice=0.03)
    assert mapper.config.refine.intensity_noise_power == 0.5


def test_disk_agreement_by_hand():
    from py4dstem_transformer.mapping.confidence import disk_agreement

    sim = torch.tensor([[[0.5, 0.0, 1.0], [0.0, 0.5, 1.0], [-0.5, 0.0, 1.0], [0.0, -0.5, 1.0]]])  # (1, 4, 3)
    sim_mask = torch.tensor([[True, True, True, False]])  # the last is not excited
    obs = torch.tensor([[[0.51, 0.0, 1.0], [0.0, 0.5, 1.0], [0.3, 0.3, 1.0], [0.0, -0.5, 1.0], [9.0, 9.0, 5.0]]])
    obs_mask = torch.tensor([[True, True, True, True, False]])  # the last is padding
    explained, unmatched, residual = disk_agreement(obs, obs_mask, sim, sim_mask, radius=0.06, power=1.0)[0]
    assert explained == pytest.approx(0.5)  # two of four observed disks have a simulated one near
    assert unmatched == pytest.approx(1 / 3)  # (-0.5, 0) has no observed disk; (0, -0.5) is not excited
    assert residual == pytest.approx(np.sqrt(0.01**2 / 2), rel=1e-4)


def test_a_calibration_without_feature_names_reads_the_first_three():
    """Model files calibrated before the seven features stored no names: they keep working."""
    s, a, n, right = synthetic(500, 3)
    cal = fit_calibration(confidence_features(s, a, n), right, steps=100)
    assert cal.features == ("score", "margin", "log1p_disks")
    old = cal.to_dict()
    del old["features"]
    back = Calibration.from_dict(old)
    full = confidence_features(s, a, n, torch.rand(500, 3), torch.rand(500))  # all seven, as the mapper gives
    assert torch.equal(back.probability(full), cal.probability(confidence_features(s, a, n)))
    with pytest.raises(ValueError, match="moved_deg"):
        fit_calibration(full, right, steps=10).probability(confidence_features(s, a, n))
