"""Polish: the pattern search on the score keeps the score's meaning, only climbs, and helps on noisy disks."""

import pytest
import torch

from py4dstem_transformer.core.kinematics import simulate_disks
from py4dstem_transformer.mapping.config import PolishConfig, ScoreConfig
from py4dstem_transformer.mapping.polish import polish_orientations
from py4dstem_transformer.core.rotations import symmetry_min_angle
from py4dstem_transformer.mapping.score import correlation, tokens_to_xy
from py4dstem_transformer.core.symmetry import point_group_rotations

from conftest import damaged_disks, kinematic_tokens, make_cu, perturb

SCORE = dict(score=ScoreConfig(), max_disks=48, k_max=2.1, r_min=0.1)


@pytest.fixture(scope="module")
def setup():
    return kinematic_tokens(120, seed=11)


def full_score(matrix, obs, mask, reflections):
    sim, sim_mask = simulate_disks(matrix.float(), reflections, SCORE["score"].sigma_excitation_error, SCORE["max_disks"],
                                   SCORE["k_max"], SCORE["r_min"])
    return correlation(obs, mask, sim, sim_mask, SCORE["score"].kernel, SCORE["score"].power)


def test_paired_score_is_the_correlation(setup):
    """With no step taken, the search's own (paired) score equals the full correlation: Cu's disks lie
    much further apart than the kernel."""
    ks, tokens, reflections = setup
    start = perturb(torch.as_tensor(ks.orientation_matrices), 0.0, 3.0, seed=2).float()
    obs = damaged_disks(tokens, seed=4)
    same, paired = polish_orientations(start, obs, tokens.mask, reflections, config=PolishConfig(steps_deg=()), **SCORE)
    assert torch.equal(same, start)
    full = full_score(start, obs, tokens.mask, reflections)
    assert torch.allclose(paired, full, atol=1e-4)


def test_only_climbs_and_finds_noisy_orientations(setup):
    ks, tokens, reflections = setup
    s = point_group_rotations(make_cu())
    true = torch.as_tensor(ks.orientation_matrices)
    start = perturb(true, 1.0, 3.0, seed=1).float()
    obs = damaged_disks(tokens, seed=3)
    polished, paired = polish_orientations(start, obs, tokens.mask, reflections, **SCORE)
    before, after = full_score(start, obs, tokens.mask, reflections), full_score(polished, obs, tokens.mask, reflections)
    assert (after >= before - 1e-4).all()
    assert (after > before + 0.01).float().mean() > 0.5
    err_before = torch.rad2deg(symmetry_min_angle(start.double(), true, s))
    err_after = torch.rad2deg(symmetry_min_angle(polished.double(), true, s))
    enough = tokens.counts >= 8
    assert float(err_after[enough].median()) < 0.5 * float(err_before[enough].median())
    m = polished.double()
    assert torch.allclose(m.transpose(1, 2) @ m, torch.eye(3, dtype=torch.float64).expand_as(m), atol=1e-5)
    assert torch.allclose(torch.linalg.det(m), torch.ones(len(m), dtype=torch.float64), atol=1e-5)


def test_patterns_without_disks_stay_put(setup):
    ks, tokens, reflections = setup
    start = torch.as_tensor(ks.orientation_matrices[:4], dtype=torch.float32)
    mask = torch.zeros(4, tokens.tokens.shape[1], dtype=torch.bool)
    out, score = polish_orientations(start, tokens_to_xy(tokens.tokens[:4]), mask, reflections, **SCORE)
    assert torch.equal(out, start) and (score == 0).all()
