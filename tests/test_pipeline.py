"""The mapping pipeline: pure stages over a MapBatch, saved settings, py4DSTEM's signature."""

import dataclasses
import inspect
import warnings

import numpy as np
import pytest
import torch

from py4dstem_transformer.core.rotations import symmetry_min_angle
from py4dstem_transformer.mapping.batch import MapBatch
from py4dstem_transformer.mapping.config import MapConfig, Query, ScoreConfig, TurnConfig, uncalibrated_warning, with_defaults
from py4dstem_transformer.mapping.mapper import TransformerOrientationMap
from py4dstem_transformer.mapping.pipeline import STAGES, map_tokens, run_stages
from py4dstem_transformer.mapping.predict import Network
from py4dstem_transformer.pretrained import load_pretrained

from conftest import KinematicSet, kinematic_scan, kinematic_tokens, make_cu


@pytest.fixture(scope="module")
def cu_mapper():
    return TransformerOrientationMap(make_cu(), load_pretrained("Cu"), precision="fp32")


def test_match_orientations_takes_py4dstems_positional_arguments():
    """Our positional parameters are py4DSTEM's, in its order; everything of ours is keyword-only."""
    from py4DSTEM.process.diffraction import Crystal

    for ours, theirs in ((TransformerOrientationMap.match_orientations, Crystal.match_orientations),
                         (TransformerOrientationMap.match_single_pattern, Crystal.match_single_pattern)):
        mine = [p for p in inspect.signature(ours).parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD][1:]
        host = list(inspect.signature(theirs).parameters.values())[1:len(mine) + 1]
        assert [p.name for p in mine] == [p.name for p in host]
        assert [p.default for p in mine[1:]] == [p.default for p in host[1:]]  # the defaults too (after the data)
    keyword_only = {p.name for p in inspect.signature(TransformerOrientationMap.match_orientations).parameters.values()
                    if p.kind == p.KEYWORD_ONLY}
    assert keyword_only == {"batch_size", "device", "chunk_size", "refine", "self_calibrate", "client", "neighbours"}


def test_min_angle_between_matches_is_honoured(cu_mapper):
    scan = kinematic_scan(KinematicSet(12, seed=5), (3, 4))
    for min_angle in (None, 30.0):
        om = cu_mapper.match_orientations(scan, 2, min_angle, progress_bar=False)
        first, second = (torch.as_tensor(om.matrix[:, :, k].reshape(-1, 3, 3)) for k in (0, 1))
        apart = torch.rad2deg(symmetry_min_angle(first, second, torch.as_tensor(cu_mapper.symmetry))).numpy()
        found = om.corr[:, :, 1].ravel() > 0
        assert found.sum() >= 6 and (apart[found] >= (min_angle or 5.0)).all()
        if min_angle is None:
            assert (apart[found] < 30).any()  # so that the 30 deg run shows the argument at work


def test_return_orientation_false_returns_nothing_and_stores_the_map(cu_mapper):
    scan = kinematic_scan(KinematicSet(4, seed=1), (2, 2))
    assert cu_mapper.match_orientations(scan, return_orientation=False, progress_bar=False) is None
    assert cu_mapper.crystal.orientation_map.matrix.shape == (2, 2, 1, 3, 3)
    with pytest.raises(ValueError, match="polar"):
        cu_mapper.match_single_pattern(np.zeros(3, dtype=[("qx", float), ("qy", float), ("intensity", float)]),
                                       plot_polar=True)


def _batch(mapper, n=16, seed=3, num_matches=2):
    _, tokens, _ = kinematic_tokens(n, seed=seed)
    network = Network(mapper.model, mapper.device, "fp32")
    hypotheses, _ = network.hypotheses(tokens, 1)
    return MapBatch(tokens, hypotheses, Query(num_matches), mapper.device), network, tokens


def test_every_stage_leaves_its_input_alone(cu_mapper):
    """Stages are pure: a stage that has nothing to do (the polish, on clean disks) returns its batch as it is."""
    batch, _, _ = _batch(cu_mapper)
    phase, config = cu_mapper.phases[0], cu_mapper.config
    for stage in STAGES:
        snapshot = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
        copies = {k: v.clone() for k, v in snapshot.items() if isinstance(v, torch.Tensor)}
        out = stage(batch, phase, config)
        assert isinstance(out, MapBatch), stage.__name__
        for k, v in copies.items():
            assert torch.equal(getattr(batch, k), v), (stage.__name__, k)  # nothing changed in place
        batch = out
    b, C = batch.score.shape
    assert C == 2 * batch.hypotheses.shape[1]  # each hypothesis and its beam flip
    assert batch.matrix.shape == (b, 2, 3, 3) and set(batch.features) >= {"score", "margin", "moved_deg"}
    assert (batch.corr[:, 0] >= batch.corr[:, 1]).all()
    np.testing.assert_allclose(torch.linalg.det(batch.matrix).numpy(), 1.0, atol=1e-5)


def test_the_stages_compose_to_the_pipeline(cu_mapper):
    """Without the turns and the library search, the pipeline of a batch is the stages run in order on the network's answer."""
    config = dataclasses.replace(cu_mapper.config, turns=TurnConfig(turns=1), search=None)
    batch, network, tokens = _batch(cu_mapper)
    by_hand = run_stages(batch, cu_mapper.phases[0], config)
    mapped = map_tokens(tokens, network, cu_mapper.phases, config, Query(2), batch_size=len(tokens) + 1)
    np.testing.assert_allclose(mapped.matrix[:, 0], by_hand.matrix.double().numpy(), atol=1e-5)
    np.testing.assert_allclose(mapped.score[:, 0], by_hand.corr.double().numpy(), atol=1e-5)


def test_refine_false_skips_the_refinement_stages(cu_mapper):
    batch, _, _ = _batch(cu_mapper)
    batch = dataclasses.replace(batch, query=Query(2, refine=False))
    out = run_stages(batch, cu_mapper.phases[0], cu_mapper.config)
    expanded = STAGES[0](batch, cu_mapper.phases[0], cu_mapper.config)
    torch.testing.assert_close(out.candidates.cpu(), expanded.candidates.cpu())  # nothing moved
    assert out.noise is None


def test_map_config_round_trip_and_flat_names():
    config = MapConfig().replace(corr_power=0.5, sparse_turns=2, polish_config=None, refine_config=MapConfig().refine,
                                 intensity_noise_power=1.0)
    assert config.score == ScoreConfig(power=0.5) and config.turns.turns == 2 and config.polish is None
    assert config.refine == dataclasses.replace(MapConfig().refine, intensity_noise_power=1.0)
    assert MapConfig.from_dict(config.to_dict()) == config and MapConfig.from_dict(MapConfig().to_dict()) == MapConfig()
    with pytest.raises(TypeError, match="corr_powr"):
        MapConfig().replace(corr_powr=0.5)
    with pytest.raises(ValueError, match="between 1 and 2"):
        Query(3, inversion_symmetry=False)


def test_a_mapper_starts_from_the_settings_its_model_was_calibrated_under(cu_mapper, tmp_path):
    """A model calibrated under another gate (``calibrate --search-confidence 1``) carries it: its mappers use it
    without a word; the user's own settings still win (and are warned about); an unreadable record falls back."""
    import copy

    from py4dstem_transformer.mapping.config import calibrated_config
    from py4dstem_transformer.mapping.confidence import METADATA_KEY

    model = copy.deepcopy(cu_mapper.model)
    thorough = MapConfig().replace(search_confidence=1.0)
    model.metadata[METADATA_KEY]["fitted_on"]["map_config"] = thorough.to_dict()
    model.save(tmp_path / "thorough.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapper = TransformerOrientationMap(make_cu(), str(tmp_path / "thorough.pt"))
    assert mapper.config == thorough and mapper.config.search.confidence == 1.0
    with pytest.warns(UserWarning, match="search.confidence: 1.0 -> 0.95"):
        assert TransformerOrientationMap(make_cu(), model, search_confidence=0.95).config == MapConfig()
    assert TransformerOrientationMap(make_cu(), model, config=MapConfig(), calibrated_confidence=False).config == MapConfig()
    # the shipped Cu model: calibrated under today's defaults but for the polish of sparse patterns and of every
    # pattern the refinement does not pin at its noise floor (2026-12-04, sixth session: disks placed with a disk
    # finder's noise); the joint one under the library search on every pattern (2026-12-03: its Cu2O beam flips)
    # and the same polish (2026-12-04, seventh session) and near ties decided the way ACOM scores (2026-12-05, eighth
    # session: its Cu2O) and the network's phase probability weighing less in the phase named (2026-12-05, ninth
    # session: its sparse Cu2O called Cu), which its mappers then use. (Both were calibrated under the
    # noise-following intensity weight for a day; on disks placed with a disk finder's 0.2 px noise it lost 1-9
    # points, docs/benchmarks.md.) The Cu model also searches a sure answer that leaves disks off its lattice
    # (2026-12-05, seventeenth session: false disks).
    assert cu_mapper.config == MapConfig().replace(polish_sparse_disks=12, polish_min_position_noise=0.0021,
                                                   search_off_lattice=0.03)
    assert cu_mapper.config.refine.sigma_position_floor < 0.0021  # the gate lies just above the refinement's floor
    joint = TransformerOrientationMap.pretrained("Cu+Cu2O")
    assert joint.config == MapConfig().replace(search_confidence=1.0, polish_sparse_disks=12,
                                               polish_min_position_noise=0.0021, acom_tie=0.02,
                                               phase_power=0.25) != MapConfig()
    assert cu_mapper.config.tiebreak.tie == 0.0 and cu_mapper.config.phase_power == 1.0
    assert joint.config.search.off_lattice == 1.0  # it searches every pattern anyway
    assert joint.config.refine.intensity_noise_power == 0.0 and joint.config.arbiter.tie == 0.0
    assert with_defaults(joint.calibration.fitted_on["map_config"]) == joint.config.to_dict()
    assert calibrated_config(None) == MapConfig() and calibrated_config({"no_such_setting": 1}) == MapConfig()


def test_settings_other_than_the_calibrations_are_warned_about(cu_mapper):
    fitted = cu_mapper.calibration.fitted_on["map_config"]
    shipped = cu_mapper.config
    assert with_defaults(fitted) == shipped.to_dict()  # the shipped model records the settings it is calibrated for
    assert uncalibrated_warning(fitted, shipped) is None
    older = shipped.replace(sigma_excitation_error=0.04)
    assert "score.sigma_excitation_error: 0.03 -> 0.04" in uncalibrated_warning(fitted, older)
    assert "score.power: 0.25 -> 0.5" in uncalibrated_warning(fitted, shipped.replace(corr_power=0.5))
    assert "refine: True -> False" in uncalibrated_warning(fitted, shipped, refine=False)
    model = cu_mapper.model
    with pytest.warns(UserWarning, match="turns.turns: 4 -> 2"):
        TransformerOrientationMap(make_cu(), model, sparse_turns=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TransformerOrientationMap(make_cu(), model)  # the calibration's own settings: no word
        TransformerOrientationMap(make_cu(), model, sparse_turns=2, calibrated_confidence=False)  # raw scores asked for
    with pytest.warns(UserWarning, match="refine"):
        cu_mapper.match_orientations(kinematic_scan(KinematicSet(1, seed=2), (1, 1)), progress_bar=False, refine=False)


def test_near_ties_are_polished_only_when_asked(cu_mapper):
    """``polish.tie_margin``: patterns whose best two distinct candidates score within it are polished even where
    their disks are exact (not noisy); 0 leaves them as refined; polishing only climbs the score."""
    from py4dstem_transformer.mapping.polish import near_ties
    from py4dstem_transformer.mapping.rank import rank_distinct
    from py4dstem_transformer.mapping.score import score

    from conftest import perturb

    ks, tokens, _ = kinematic_tokens(24, seed=5)
    phase = cu_mapper.phases[0]
    start = perturb(torch.as_tensor(ks.orientation_matrices), 1.0, 2.0, seed=6).float()[:, None]
    refined = run_stages(MapBatch(tokens, start, Query(), torch.device("cpu")), phase, cu_mapper.config, STAGES[:2])
    assert bool((refined.noise.min(1).values <= cu_mapper.config.polish.min_position_noise).all())  # exact disks

    def polished(margin):
        config = dataclasses.replace(cu_mapper.config, polish=dataclasses.replace(cu_mapper.config.polish,
                                                                                  tie_margin=margin, sparse_disks=0))
        return config, STAGES[2](refined, phase, config)

    off, everything = polished(0.0), polished(1.0)  # a margin of 1 makes every pattern a near tie
    assert torch.equal(off[1].candidates, refined.candidates)
    moved = (everything[1].candidates - refined.candidates).abs().amax((-1, -2)) > 1e-6  # (b, C)
    assert bool(moved.any(1).all())
    before, after = score(refined, phase, off[0]).score, score(everything[1], phase, off[0]).score
    assert bool((after >= before - 1e-4).all())
    # near_ties: the gap between the two best distinct candidates, as refined
    config = polished(0.02)[0]
    corr = rank_distinct(refined.candidates, before, 2, phase.symmetry, config.margin_deg, config.margin_deg)[1]
    expected = (corr[:, 0] - corr[:, 1]) < 0.02
    assert torch.equal(near_ties(refined, phase, config), expected)


def test_sparse_patterns_are_polished_only_when_asked(cu_mapper):
    """``polish.sparse_disks``: patterns with at most that many disks are polished even where the refinement pinned
    them (exact disks); the others, and every pattern with 0, stay as refined."""
    from conftest import perturb

    ks, tokens, _ = kinematic_tokens(24, seed=5)
    phase = cu_mapper.phases[0]
    start = perturb(torch.as_tensor(ks.orientation_matrices), 1.0, 2.0, seed=6).float()[:, None]
    refined = run_stages(MapBatch(tokens, start, Query(), torch.device("cpu")), phase, cu_mapper.config, STAGES[:2])
    assert bool((refined.noise.min(1).values <= cu_mapper.config.polish.min_position_noise).all())  # exact disks
    limit = int(tokens.counts.median())
    sparse = tokens.counts <= limit
    assert bool(sparse.any()) and not bool(sparse.all())

    def polished(sparse_disks):
        config = cu_mapper.config.replace(polish_sparse_disks=sparse_disks)
        return STAGES[2](refined, phase, config).candidates

    assert torch.equal(polished(0), refined.candidates)
    moved = ((polished(limit) - refined.candidates).abs().amax((-1, -2)) > 1e-6).any(1)  # (b,)
    assert not bool(moved[~sparse].any())  # the richer patterns are left as refined
    assert bool(moved[sparse].float().mean() > 0.5)  # the sparse ones are searched (a few may not climb)


def test_a_setting_newer_than_the_calibration_counts_at_its_default(cu_mapper):
    """A model calibrated before ``polish.tie_margin`` existed maps without a warning under its default (the old
    behaviour) and with one under another value."""
    fitted = cu_mapper.calibration.fitted_on["map_config"]
    older = dict(fitted, polish={k: v for k, v in fitted["polish"].items() if k != "tie_margin"})
    shipped = cu_mapper.config
    assert "tie_margin" not in older["polish"] and with_defaults(older) == shipped.to_dict()
    assert uncalibrated_warning(older, shipped) is None
    other = dataclasses.replace(shipped, polish=dataclasses.replace(shipped.polish, tie_margin=0.03))
    assert "polish.tie_margin: 0.0 -> 0.03" in uncalibrated_warning(older, other)
    assert with_defaults({"polish": None})["polish"] is None  # a part switched off stays off
