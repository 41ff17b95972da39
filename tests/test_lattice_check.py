"""The lattice check (the library search's second gate): a right answer leaves no disk off its lattice, a false
disk or a wrong answer does; the share is permutation invariant and weighted as documented."""

import torch

from py4dstem_transformer.core.kinematics import Reflections, simulate_disks
from py4dstem_transformer.core.rotations import exp_so3, random_rotations
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.mapping.config import ScoreConfig, SearchConfig
from py4dstem_transformer.mapping.lattice_check import off_lattice_share
from py4dstem_transformer.mapping.phase import Phase

from conftest import make_cu, points_off_lattice

SCORE, SEARCH = ScoreConfig(), SearchConfig()
RADIUS = 2 * SCORE.kernel


def _phase():
    crystal = make_cu()
    reflections = Reflections.from_crystal(crystal, 2.1, 300e3)
    return Phase("Cu", crystal, reflections, point_group_rotations(crystal).numpy(),
                 reflections.min_disk_separation(0.04), 2.1, 0.1)


def _share(obs, mask, matrix, phase):
    return off_lattice_share(obs, mask, matrix, phase, SEARCH.lattice_sigma, RADIUS, SCORE.power)


def _patterns(phase, n, seed):
    """(n, M, 3) disks of n random orientations (the score's excitation width: a narrower window than the check's)."""
    truth = random_rotations(n, seed=seed).float()
    obs, mask = simulate_disks(truth, phase.reflections, 0.02, 24, k_max=2.1, r_min=0.1)
    return truth, obs, mask


def _far_from_lattice(phase, truth, seed):
    """(n, 2) a point per pattern inside the window and at least twice the radius from every reflection of its
    lattice (the check's window), drawn at random."""
    sim, sim_mask = simulate_disks(truth, phase.reflections, SEARCH.lattice_sigma, 512, k_max=2.1, r_min=0.1)
    return points_off_lattice(sim, sim_mask, 2 * RADIUS, (0.3, 2.0), seed)


def test_a_right_answer_leaves_no_disk_off_its_lattice():
    phase = _phase()
    truth, obs, mask = _patterns(phase, 12, seed=3)
    share = _share(obs, mask, truth, phase)
    assert share.shape == (12,) and torch.all(share == 0)


def test_a_false_disk_is_off_the_lattice_by_its_weight():
    phase = _phase()
    truth, obs, mask = _patterns(phase, 12, seed=4)
    false = _far_from_lattice(phase, truth, seed=5)
    obs = torch.cat([obs, torch.cat([false, torch.full((12, 1), 0.5)], -1)[:, None]], 1)
    mask = torch.cat([mask, torch.ones(12, 1, dtype=torch.bool)], 1)
    share = _share(obs, mask, truth, phase)
    w = obs[..., 2].clamp_min(0).pow(SCORE.power) * mask
    torch.testing.assert_close(share, w[:, -1] / w.sum(-1))
    assert torch.all(share > 0.03)
    # the disks' order does not matter
    order = torch.randperm(obs.shape[1], generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(_share(obs[:, order], mask[:, order], truth, phase), share)


def test_a_wrong_answer_leaves_disks_off_its_lattice():
    phase = _phase()
    truth, obs, mask = _patterns(phase, 16, seed=7)
    axis = torch.nn.functional.normalize(torch.randn(16, 3, generator=torch.Generator().manual_seed(8)), dim=-1)
    wrong = exp_so3(axis * torch.deg2rad(torch.tensor(20.0))).float() @ truth  # 20 deg off, about random axes
    share = _share(obs, mask, wrong, phase)
    assert share.median() > 0.3 and torch.all(share > 0.03)
    # a first guess of too few reflections is widened until no answer's lattice is cut off
    few = off_lattice_share(obs, mask, wrong, phase, SEARCH.lattice_sigma, RADIUS, SCORE.power, max_disks=8)
    torch.testing.assert_close(few, share)


def test_a_pattern_without_disks_has_nothing_off_its_lattice():
    phase = _phase()
    obs, mask = torch.zeros(2, 3, 3), torch.zeros(2, 3, dtype=torch.bool)
    assert torch.all(_share(obs, mask, torch.eye(3).expand(2, 3, 3), phase) == 0)
