"""The coarse orientation library: rasterized scoring agrees with the exact correlation and finds the truth."""

import torch

from py4dstem_transformer.core.kinematics import Reflections, simulate_disks
from py4dstem_transformer.core.rotations import random_rotations, symmetry_min_angle
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.mapping.config import ScoreConfig, SearchConfig
from py4dstem_transformer.mapping.library import _rasters, build_library, library_hypotheses
from py4dstem_transformer.mapping.phase import Phase
from py4dstem_transformer.mapping.score import correlation

from conftest import make_cu

SCORE = ScoreConfig()


def _phase():
    crystal = make_cu()
    reflections = Reflections.from_crystal(crystal, 2.1, 300e3)
    rotations = point_group_rotations(crystal).numpy()
    return Phase("Cu", crystal, reflections, rotations, reflections.min_disk_separation(0.04), 2.1, 0.1)


def test_the_raster_reads_the_exact_correlation():
    phase = _phase()
    library = build_library(phase, SearchConfig(size=300, seed=1), SCORE)
    truth = random_rotations(4, seed=2).float()
    obs, mask = simulate_disks(truth, phase.reflections, 0.02, 24, k_max=2.1, r_min=0.1)
    wa = obs[..., 2].clamp_min(0).pow(SCORE.power) * mask
    image = _rasters(obs[..., :2], wa, library.side, library.step, SCORE.kernel)
    raster = (library.reader @ image.T.contiguous()).T / torch.sqrt((wa * wa).sum(-1)[:, None] * library.bb)
    sim, sim_mask = simulate_disks(library.orientations, phase.reflections, SCORE.sigma_excitation_error, 32,
                                   k_max=2.1, r_min=0.1)
    exact = correlation(obs, mask, sim[None].expand(4, -1, -1, -1), sim_mask[None].expand(4, -1, -1),
                        SCORE.kernel, SCORE.power, phase.separation)
    # nearest-pixel reads are within a few per cent of the closed form (disks of one pattern are far apart)
    assert float((raster - exact).abs().max()) < 0.05
    assert float(exact.max()) > 0.1  # the comparison is not between zeros


def test_the_library_proposes_its_own_orientations_back():
    phase = _phase()
    library = build_library(phase, SearchConfig(size=2000, seed=3), SCORE)
    members = torch.tensor([5, 77, 1234, 1999])
    obs, mask = simulate_disks(library.orientations[members], phase.reflections, SCORE.sigma_excitation_error, 40,
                               k_max=2.1, r_min=0.1)
    found = library_hypotheses(obs, mask, library, SCORE.kernel, SCORE.power, top=4)
    assert found.shape == (4, 4, 3, 3)
    s = point_group_rotations(make_cu())
    for i in range(4):
        angle = symmetry_min_angle(found[i].double(), library.orientations[members[i]].double().expand(4, 3, 3), s)
        assert float(torch.rad2deg(angle).min()) < 1e-3  # the member itself is among the top four
