"""The ``tiebreak`` stage: near ties between distinct candidates decided by a correlation with ACOM's settings."""

import dataclasses

import numpy as np
import pytest
import torch

from py4dstem_transformer.core.kinematics import Reflections, simulate_disks
from py4dstem_transformer.core.rotations import random_rotations, symmetry_min_angle
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.mapping.batch import MapBatch
from py4dstem_transformer.mapping.config import MapConfig, Query, TieBreakConfig, with_defaults
from py4dstem_transformer.mapping.phase import Phase
from py4dstem_transformer.mapping.pipeline import STAGES
from py4dstem_transformer.mapping.rank import rank
from py4dstem_transformer.mapping.score import correlation, tokens_to_xy
from py4dstem_transformer.mapping.tiebreak import acom_like_correlation, tiebreak
from py4dstem_transformer.model.tokens import Tokens

from conftest import assert_a_tie_setting_changes_only_near_ties, make_cu2o

ON = MapConfig().replace(acom_tie=0.05)


@pytest.fixture(scope="module")
def phase():
    crystal = make_cu2o()
    reflections = Reflections.from_crystal(crystal, 2.0, 300e3)
    return Phase("Cu2O", crystal, reflections, point_group_rotations(crystal).numpy(),
                 reflections.min_disk_separation(0.03), 2.0, 0.1)


def as_tokens(disks, mask):
    r = torch.linalg.vector_norm(disks[..., :2], dim=-1)
    tokens = torch.stack([r, torch.atan2(disks[..., 1], disks[..., 0]), disks[..., 2]], -1) * mask[..., None]
    return Tokens(tokens.float(), mask, mask.sum(1))


def _batch(phase, truth, wrong, score, truth_first=False):
    """Patterns of ``truth`` (kinematic, ACOM's excitation width), the candidates ``[wrong, truth]`` (or ``[truth,
    wrong]``) scored ``score``."""
    disks, mask = simulate_disks(truth, phase.reflections, 0.02, TieBreakConfig().disks, **phase.window)
    b = MapBatch(as_tokens(disks, mask), truth[:, None], Query(1), torch.device("cpu"))
    pair = [truth, wrong] if truth_first else [wrong, truth]
    return dataclasses.replace(b, candidates=torch.stack(pair, 1), score=score,
                               shift=torch.zeros(len(truth), 2, 2))


def test_the_radial_weight_is_a_weight_and_zero_leaves_the_score_as_it_was():
    gen = torch.Generator().manual_seed(0)
    obs = torch.cat([torch.rand(6, 12, 2, generator=gen) * 3 - 1.5, torch.rand(6, 12, 1, generator=gen)], -1)
    mask = torch.ones(6, 12, dtype=torch.bool)
    sim = obs + torch.cat([0.01 * torch.randn(6, 12, 2, generator=gen), torch.zeros(6, 12, 1)], -1)
    plain = correlation(obs, mask, sim, mask, 0.03, 0.25)
    assert torch.equal(correlation(obs, mask, sim, mask, 0.03, 0.25, radial_power=0.0), plain)
    assert torch.allclose(correlation(obs, mask, obs, mask, 0.08, 0.25, radial_power=1.0), torch.ones(6))
    # by hand: weights I ** power * |q| ** radial_power in the closed-form cosine
    wa = obs[..., 2] ** 0.25 * obs[..., :2].norm(dim=-1)
    wb = sim[..., 2] ** 0.25 * sim[..., :2].norm(dim=-1)
    k = lambda a, b: torch.exp(-torch.cdist(a[..., :2], b[..., :2]) ** 2 / (4 * 0.08**2))  # noqa: E731
    ab = torch.einsum("bn,bnm,bm->b", wa, k(obs, sim), wb)
    aa, bb = (torch.einsum("bn,bnm,bm->b", w, k(x, x), w) for w, x in ((wa, obs), (wb, sim)))
    expected = ab / torch.sqrt(aa * bb)
    assert torch.allclose(correlation(obs, mask, sim, mask, 0.08, 0.25, radial_power=1.0), expected, atol=1e-5)


def test_a_decided_tie_puts_the_candidate_acom_would_pick_first_and_changes_nothing_else(phase):
    truth, wrong = random_rotations(30, seed=4).float(), random_rotations(30, seed=5).float()
    score = torch.stack([torch.full((30,), 0.70), torch.full((30,), 0.68)], 1)  # the wrong one scored higher
    batch = _batch(phase, truth, wrong, score)
    assert bool((batch.tokens.counts >= TieBreakConfig().min_disks).all())
    before = rank(batch, phase, ON)
    out = rank(tiebreak(batch, phase, ON), phase, ON)
    sym = torch.as_tensor(phase.rotations).float()
    assert not bool((symmetry_min_angle(before.matrix[:, 0], truth, sym) < np.radians(1)).any())
    assert bool((symmetry_min_angle(out.matrix[:, 0], truth, sym) < np.radians(1e-3)).all())
    assert torch.equal(out.score, batch.score)  # the scores stay the score's
    assert torch.allclose(out.corr[:, 0], torch.tensor(0.68)) and torch.allclose(out.alternative[:, 0],
                                                                                  torch.tensor(0.70))
    # the other way round: the best already scores higher under ACOM's settings, so nothing moves
    kept = tiebreak(_batch(phase, truth, wrong, score, truth_first=True), phase, ON)
    assert torch.equal(rank(kept, phase, ON).pick[:, 0], torch.zeros(30, dtype=torch.long))
    # the ACOM-like correlation itself: the truth's own disks, as ACOM would simulate them
    acom = acom_like_correlation(tokens_to_xy(batch.tokens.tokens), batch.tokens.mask, batch.candidates, batch.shift,
                                 phase, ON.tiebreak)
    assert bool((acom[:, 1] > 0.99).all()) and bool((acom[:, 0] < acom[:, 1]).all())


def test_off_by_default_without_refinement_beyond_the_tie_and_on_sparse_patterns(phase):
    truth, wrong = random_rotations(6, seed=6).float(), random_rotations(6, seed=7).float()
    batch = _batch(phase, truth, wrong, torch.tensor([[0.70, 0.69]] * 6))
    assert MapConfig().tiebreak.tie == 0
    assert tiebreak(batch, phase, MapConfig()) is batch
    unrefined = dataclasses.replace(batch, query=Query(1, refine=False))
    assert tiebreak(unrefined, phase, ON) is unrefined
    assert tiebreak(batch, phase, ON) is not batch  # the stage does run here
    far = _batch(phase, truth, wrong, torch.tensor([[0.9, 0.5]] * 6))
    assert tiebreak(far, phase, ON) is far
    mask = batch.tokens.mask & (torch.arange(batch.tokens.mask.shape[1]) < TieBreakConfig().min_disks - 1)
    sparse = dataclasses.replace(batch, tokens=Tokens(batch.tokens.tokens * mask[..., None], mask, mask.sum(1)))
    assert tiebreak(sparse, phase, ON) is sparse


def test_the_stage_runs_after_the_score_and_before_the_rank():
    names = [s.__name__ for s in STAGES]
    assert names.index("score") < names.index("tiebreak") < names.index("arbitrate") < names.index("rank")


def test_the_setting_round_trips_and_older_records_read_it_as_off():
    assert MapConfig.from_dict(ON.to_dict()) == ON
    old = ON.to_dict()
    del old["tiebreak"]
    assert MapConfig.from_dict(with_defaults(old)).tiebreak == TieBreakConfig()


@pytest.mark.slow
def test_the_joint_model_changes_only_near_ties_on_py4dstem_patterns():
    """py4DSTEM's own Bloch-wave Cu2O patterns through the shipped joint model with the stage off and on
    (:func:`conftest.assert_a_tie_setting_changes_only_near_ties`)."""
    assert_a_tie_setting_changes_only_near_ties("acom_tie", 0.02)
