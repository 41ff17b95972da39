"""The ``arbitrate`` stage: near ties between distinct candidates decided on the disks' intensity profiles."""

import dataclasses

import numpy as np
import pytest
import torch

from py4dstem_transformer.core.kinematics import Reflections, excitation_error, simulate_disks
from py4dstem_transformer.core.rotations import beam_flip, random_rotations, symmetry_min_angle
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.mapping.arbiter import arbitrate, near_ties, profile_fit
from py4dstem_transformer.mapping.batch import MapBatch
from py4dstem_transformer.mapping.config import ArbiterConfig, MapConfig, Query, with_defaults
from py4dstem_transformer.mapping.phase import Phase
from py4dstem_transformer.mapping.rank import rank, rank_distinct
from py4dstem_transformer.model.tokens import Tokens

from conftest import assert_a_tie_setting_changes_only_near_ties, make_cu2o

CFG = ArbiterConfig(tie=0.1)


@pytest.fixture(scope="module")
def phase():
    crystal = make_cu2o()
    reflections = Reflections.from_crystal(crystal, 2.0, 200e3)
    return Phase("Cu2O", crystal, reflections, point_group_rotations(crystal).numpy(),
                 reflections.min_disk_separation(0.03), 2.0, 0.1)


def thickness_pattern(matrix, phase, thickness):
    """(B, N, 3) disks ``(qx, qy, I)`` of a kinematic foil ``thickness`` (A) thick, I over the brightest, the
    fainter than 1e-3 left out (what a detector keeps), and their (B, N) mask."""
    refl = phase.reflections
    disks, mask, index = simulate_disks(matrix, refl, 0.03, 64, k_max=2.0, return_index=True)
    g = refl.g[index]
    gz, g2 = (g @ matrix)[..., 2], (g * g).sum(-1)
    sg = excitation_error(gz, g2, refl.wavelength)
    i = refl.intensity[index] * torch.sinc(sg * thickness) ** 2 * mask
    i = i / i.amax(1, keepdim=True)
    return torch.cat([disks[..., :2], i[..., None]], -1), mask & (i >= 1e-3)


def as_tokens(disks, mask):
    r = torch.linalg.vector_norm(disks[..., :2], dim=-1)
    tokens = torch.stack([r, torch.atan2(disks[..., 1], disks[..., 0]), disks[..., 2]], -1) * mask[..., None]
    return Tokens(tokens.float(), mask, mask.sum(1))


def test_the_profile_of_the_truth_fits_better_than_its_beam_flip(phase):
    """Same disk positions, the Laue circle on the other side: the thickness fit tells them apart."""
    truth = random_rotations(40, seed=3).float()
    obs, mask = thickness_pattern(truth, phase, 300.0)
    zero = torch.zeros(40, 2)
    own = profile_fit(obs, mask, truth, zero, phase, CFG)[0]
    flip = profile_fit(obs, mask, beam_flip(truth), zero, phase, CFG)[0]
    assert own.min() > 0.9  # the model itself (the grid misses 300 A; the faint reflections read as 0)
    differ = (own - flip).abs() > 1e-3
    assert differ.sum() >= 20
    assert (own[differ] > flip[differ]).float().mean() >= 0.9


def test_the_fit_reads_relative_intensities_and_follows_the_origin_shift(phase):
    truth = random_rotations(12, seed=5).float()
    obs, mask = thickness_pattern(truth, phase, 500.0)
    zero = torch.zeros(12, 2)
    fit, residual = profile_fit(obs, mask, truth, zero, phase, CFG)
    assert float(residual.max()) < 1e-5  # exact disks on their reflections
    scaled = obs.clone()
    scaled[..., 2] *= 7.0
    assert torch.allclose(profile_fit(scaled, mask, truth, zero, phase, CFG)[0], fit, atol=1e-5)
    shift = torch.tensor([0.02, -0.01]).expand(12, 2)
    moved = obs.clone()
    moved[..., :2] += shift[:, None]
    assert torch.allclose(profile_fit(moved, mask, truth, shift, phase, CFG)[0], fit, atol=1e-4)
    assert float(profile_fit(moved, mask, truth, zero, phase, CFG)[1].min()) > 0.02  # unshifted: 0.022 off
    # a pattern without disks has no fit
    none = profile_fit(obs, torch.zeros_like(mask), truth, zero, phase, CFG)
    assert bool((none[0] == -1).all()) and bool(torch.isinf(none[1]).all())


def test_near_ties_skip_symmetry_copies_and_respect_the_tie(phase):
    m = random_rotations(3, seed=7).float()
    s = torch.as_tensor(phase.rotations[5]).float()
    copy = s @ m  # the same orientation, another symmetry-equivalent matrix
    candidates = torch.stack([m, copy, beam_flip(m)], 1)  # (3, 3, 3, 3)
    score = torch.tensor([[0.80, 0.79, 0.75], [0.80, 0.79, 0.60], [0.70, -1.0, 0.72]])
    rows, best, rival = near_ties(candidates, score, torch.as_tensor(phase.rotations).float(), 5.0, 0.1)
    assert rows.tolist() == [0, 2]  # row 1: the flip is 0.2 behind; the copy is no rival
    assert best.tolist() == [0, 2] and rival.tolist() == [2, 0]
    assert near_ties(candidates, score, torch.as_tensor(phase.rotations).float(), 5.0, 0.03)[0].tolist() == [2]


def test_rank_follows_the_order_and_reports_each_match_its_own_score(phase):
    m = random_rotations(2, seed=8).float()
    candidates = torch.stack([m, beam_flip(m)], 1)
    score = torch.tensor([[0.8, 0.7], [0.6, 0.5]])
    order = score.clone()
    order[0, 1] = 0.9
    sym = torch.as_tensor(phase.rotations).float()
    matrix, corr, alternative, pick = rank_distinct(candidates, score, 2, sym, 5.0, 5.0, order)
    assert pick.tolist() == [[1, 0], [0, 1]]
    assert torch.allclose(corr, torch.tensor([[0.7, 0.8], [0.6, 0.5]]))
    assert torch.allclose(alternative[:, 0], torch.tensor([0.8, 0.5]))  # the margin of a decided tie is < 0
    plain = rank_distinct(candidates, score, 2, sym, 5.0, 5.0)
    assert plain[3].tolist() == [[0, 1], [0, 1]]


def _batch(phase, truth, score, thickness=300.0):
    obs, mask = thickness_pattern(truth, phase, thickness)
    candidates = torch.stack([beam_flip(truth), truth], 1)  # the flip first, scored higher
    b = MapBatch(as_tokens(obs, mask), truth[:, None], Query(1), torch.device("cpu"))
    return dataclasses.replace(b, candidates=candidates, score=score, shift=torch.zeros(len(truth), 2, 2))


def test_a_decided_tie_puts_the_better_profile_first_and_changes_nothing_else(phase):
    truth = random_rotations(30, seed=9).float()
    score = torch.stack([torch.full((30,), 0.70), torch.full((30,), 0.68)], 1)
    batch = _batch(phase, truth, score)
    config = MapConfig().replace(intensity_tie=0.05)
    out = rank(arbitrate(batch, phase, config), phase, config)
    right = symmetry_min_angle(out.matrix[:, 0], truth, torch.as_tensor(phase.rotations).float()) < np.radians(1)
    assert right.float().mean() >= 0.9  # where the scores alone put the flip first everywhere
    before = rank(batch, phase, config)
    assert not bool((symmetry_min_angle(before.matrix[:, 0], truth, torch.as_tensor(phase.rotations).float())
                     < np.radians(1)).any())
    assert torch.equal(out.score, batch.score)  # the scores stay the score's
    moved = out.pick[:, 0] == 1
    assert torch.allclose(out.corr[moved, 0], torch.tensor(0.68)) and torch.allclose(out.alternative[moved, 0],
                                                                                      torch.tensor(0.70))
    # candidates that place the disks worse than max_residual are not compared
    strict = MapConfig().replace(arbiter=dataclasses.replace(config.arbiter, max_residual=1e-7))
    jittered = _batch(phase, truth, score)
    noisy = jittered.tokens.tokens.clone()
    noisy[..., 1] += 0.01 * torch.randn(noisy.shape[:2], generator=torch.Generator().manual_seed(0))  # theta, rad
    jittered = dataclasses.replace(jittered, tokens=Tokens(noisy, jittered.tokens.mask, jittered.tokens.counts))
    assert torch.equal(rank(arbitrate(jittered, phase, strict), phase, strict).pick, before.pick)
    assert not torch.equal(rank(arbitrate(jittered, phase, config), phase, config).pick, before.pick)  # ungated: swaps
    # beyond the tie nothing is compared
    far = arbitrate(_batch(phase, truth, torch.stack([torch.full((30,), 0.9), torch.full((30,), 0.5)], 1)),
                    phase, config)
    assert far.order is None


def test_with_both_tie_stages_a_rival_is_first_where_either_stage_puts_it_first(phase):
    """``tiebreak`` (ACOM's correlation) runs before ``arbitrate`` (the profile); each only ever moves a rival up, so
    with both on a rival is first exactly where either alone puts it first: the later stage does not undo the
    earlier's decision. Here each decides patterns the other does not (a wider tie for the first, on the richer
    patterns only; a narrower one for the second), so the union is a real test."""
    from py4dstem_transformer.mapping.pipeline import STAGES
    from py4dstem_transformer.mapping.tiebreak import tiebreak

    truth = random_rotations(60, seed=9).float()
    gap = torch.where(torch.arange(60) < 30, 0.02, 0.06)  # the beam flip scored 0.70, the truth 0.70 - gap
    batch = _batch(phase, truth, torch.stack([torch.full((60,), 0.70), 0.70 - gap], 1))

    def rival_first(**ties):
        config = MapConfig().replace(**ties)
        config = config.replace(tiebreak=dataclasses.replace(config.tiebreak, min_disks=25))
        out = batch
        for stage in (s for s in STAGES if s in (tiebreak, arbitrate)):  # the pipeline's order
            out = stage(out, phase, config)
        ranked = rank(out, phase, config)
        assert torch.equal(ranked.score, batch.score)  # the scores stay the score's
        return ranked.pick[:, 0] == 1

    acom, profile = rival_first(acom_tie=0.1), rival_first(intensity_tie=0.03)
    both = rival_first(acom_tie=0.1, intensity_tie=0.03)
    assert (acom & ~profile).any() and (profile & ~acom).any()  # measured: 13 and 17 of 60
    assert torch.equal(both, acom | profile)


def test_off_by_default_for_precession_and_without_refinement(phase):
    truth = random_rotations(4, seed=10).float()
    batch = _batch(phase, truth, torch.tensor([[0.7, 0.69]] * 4))
    assert MapConfig().arbiter.tie == 0
    assert arbitrate(batch, phase, MapConfig()) is batch
    precessed = dataclasses.replace(phase, reflections=Reflections(phase.reflections.g, phase.reflections.intensity,
                                                                   phase.reflections.wavelength, 0.01))
    assert arbitrate(batch, precessed, MapConfig().replace(intensity_tie=0.1)) is batch
    unrefined = dataclasses.replace(batch, query=Query(1, refine=False))
    assert arbitrate(unrefined, phase, MapConfig().replace(intensity_tie=0.1)) is unrefined
    assert arbitrate(batch, phase, MapConfig().replace(intensity_tie=0.1)) is not batch  # the stage does run here
    # a sparse pattern (fewer than min_disks disks) is not compared
    mask = batch.tokens.mask & (torch.arange(batch.tokens.mask.shape[1]) < 8)
    sparse = dataclasses.replace(batch, tokens=Tokens(batch.tokens.tokens * mask[..., None], mask, mask.sum(1)))
    assert MapConfig().arbiter.min_disks == 12
    assert arbitrate(sparse, phase, MapConfig().replace(intensity_tie=0.1)) is sparse


def test_the_setting_round_trips_and_older_records_read_it_as_off():
    config = MapConfig().replace(intensity_tie=0.1)
    assert MapConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    del old["arbiter"]
    assert MapConfig.from_dict(with_defaults(old)).arbiter == ArbiterConfig()


@pytest.mark.slow
def test_the_joint_model_changes_only_near_ties_on_py4dstem_patterns():
    """py4DSTEM's own Bloch-wave Cu2O patterns through the shipped joint model with the stage off and on
    (:func:`conftest.assert_a_tie_setting_changes_only_near_ties`)."""
    assert_a_tie_setting_changes_only_near_ties("intensity_tie", 0.05)
