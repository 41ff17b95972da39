"""Refinement against the disks: converges on clean kinematic data, survives damage, stays proper."""

import pytest
import torch

from py4dstem_transformer.core.rotations import exp_so3, skew
from py4dstem_transformer.mapping.config import RefineConfig
from py4dstem_transformer.mapping.refine import refine_orientations
from py4dstem_transformer.core.rotations import symmetry_min_angle
from py4dstem_transformer.mapping.score import tokens_to_xy
from py4dstem_transformer.core.symmetry import point_group_rotations

from conftest import damaged_disks, kinematic_tokens, make_cu, perturb


@pytest.fixture(scope="module")
def setup():
    return kinematic_tokens(150, seed=5)


def test_converges_back_from_one_to_two_degrees(setup):
    ks, tokens, reflections = setup
    s = point_group_rotations(make_cu())
    true = torch.as_tensor(ks.orientation_matrices)
    start = perturb(true, 1.0, 2.0, seed=0).float()
    refined = refine_orientations(start, tokens_to_xy(tokens.tokens), tokens.mask, reflections, k_max=2.1, r_min=0.1)
    err = torch.rad2deg(symmetry_min_angle(refined.double(), true, s))
    well_posed = tokens.counts >= 6
    assert float(err[well_posed].median()) < 0.01
    assert (err[well_posed] < 0.05).float().mean() > 0.95
    m = refined.double()
    assert torch.allclose(m.transpose(1, 2) @ m, torch.eye(3, dtype=torch.float64).expand_as(m), atol=1e-5)
    assert torch.allclose(torch.linalg.det(m), torch.ones(len(m), dtype=torch.float64), atol=1e-5)


def test_damaged_disks_still_improve_the_start(setup):
    ks, tokens, reflections = setup
    s = point_group_rotations(make_cu())
    obs = damaged_disks(tokens, seed=3)  # 0.01 1/A jitter, 20% intensity noise
    true = torch.as_tensor(ks.orientation_matrices)
    start = perturb(true, 1.0, 3.0, seed=1).float()
    refined = refine_orientations(start, obs, tokens.mask, reflections, k_max=2.1, r_min=0.1)
    before = torch.rad2deg(symmetry_min_angle(start.double(), true, s))
    after = torch.rad2deg(symmetry_min_angle(refined.double(), true, s))
    assert float(after.median()) < 0.5 * float(before.median())


def test_reflections_chosen_once_give_the_fit_of_all_reflections(setup):
    """The fit keeps each candidate's reflections from its start (``subset_reflections``); from 1-3 deg off,
    on damaged disks, it ends where re-simulating from all reflections at every iteration ends."""
    ks, tokens, reflections = setup
    s = point_group_rotations(make_cu())
    obs = damaged_disks(tokens, seed=4)
    start = perturb(torch.as_tensor(ks.orientation_matrices), 1.0, 3.0, seed=2).float()
    every = refine_orientations(start, obs, tokens.mask, reflections, RefineConfig(subset_reflections=0), k_max=2.1, r_min=0.1)
    once = refine_orientations(start, obs, tokens.mask, reflections, RefineConfig(), k_max=2.1, r_min=0.1)
    assert RefineConfig().subset_reflections < len(reflections.g)  # the subset is really a subset here
    apart = torch.rad2deg(symmetry_min_angle(once.double(), every.double(), s))
    assert (apart < 0.01).float().mean() > 0.97


def test_patterns_without_disks_stay_put(setup):
    ks, tokens, reflections = setup
    start = torch.as_tensor(ks.orientation_matrices[:4], dtype=torch.float32)
    mask = torch.zeros(4, tokens.tokens.shape[1], dtype=torch.bool)
    out = refine_orientations(start, tokens_to_xy(tokens.tokens[:4]), mask, reflections)
    assert torch.allclose(out, start, atol=1e-6)


def test_skew_is_the_cross_product():
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose((skew(a) @ b[..., None])[..., 0], torch.cross(a, b, dim=-1))
    r = exp_so3(a)
    assert torch.allclose(r.transpose(1, 2) @ r, torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-12)


def test_intensity_weight_can_follow_the_position_noise(setup):
    """``intensity_noise_power``: on exactly placed disks whose intensities break the kinematic law (as Bloch-wave
    ones do), weighting the intensities down by the measured position noise lands nearer the truth; where the
    noise sits at ``sigma_position`` it changes nothing."""
    ks, tokens, reflections = setup
    s = point_group_rotations(make_cu())
    true = torch.as_tensor(ks.orientation_matrices)
    start = perturb(true, 1.0, 2.0, seed=1).float()
    obs = tokens_to_xy(tokens.tokens).clone()
    g = torch.Generator().manual_seed(7)
    obs[..., 2] *= torch.exp(0.7 * torch.randn(obs[..., 2].shape, generator=g))  # intensities off the law, positions exact
    well_posed = tokens.counts >= 6

    def median_error(config):
        refined = refine_orientations(start, obs, tokens.mask, reflections, config, k_max=2.1, r_min=0.1)
        return refined, float(torch.rad2deg(symmetry_min_angle(refined.double(), true, s))[well_posed].median())

    plain_fit, plain = median_error(RefineConfig())
    following_fit, following = median_error(RefineConfig(intensity_noise_power=1.0))
    assert following < 0.5 * plain, (following, plain)
    # intensity_noise_max_disks: only candidates with at most that many disks assigned are weighted so
    everyone, _ = median_error(RefineConfig(intensity_noise_power=1.0, intensity_noise_max_disks=10_000))
    nobody, _ = median_error(RefineConfig(intensity_noise_power=1.0, intensity_noise_max_disks=1))
    assert torch.equal(everyone, following_fit)
    assert torch.equal(nobody[well_posed], plain_fit[well_posed])
    pinned = dict(sigma_position_floor=0.01, sigma_position=0.01)  # the noise estimate is the cap itself
    a, _ = median_error(RefineConfig(**pinned))
    b, _ = median_error(RefineConfig(intensity_noise_power=1.0, **pinned))
    assert torch.equal(a, b)
