"""The coarse orientation library: rasterized scoring agrees with the exact correlation and finds the truth;
the compiled pass ranks as the torch path does."""

import pytest
import torch

from py4dstem_transformer.core.kinematics import Reflections, simulate_disks
from py4dstem_transformer.core.rotations import random_rotations, symmetry_min_angle
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.mapping.config import ScoreConfig, SearchConfig
from py4dstem_transformer.mapping import library_fused
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


@pytest.mark.parametrize("fused", [False, True])
def test_the_library_proposes_its_own_orientations_back(fused):
    phase = _phase()
    library = build_library(phase, SearchConfig(size=2000, seed=3), SCORE)
    members = torch.tensor([5, 77, 1234, 1999])
    obs, mask = simulate_disks(library.orientations[members], phase.reflections, SCORE.sigma_excitation_error, 40,
                               k_max=2.1, r_min=0.1)
    found = library_hypotheses(obs, mask, library, SCORE.kernel, SCORE.power, top=4, fused=fused)
    assert found.shape == (4, 4, 3, 3)
    s = point_group_rotations(make_cu())
    for i in range(4):
        angle = symmetry_min_angle(found[i].double(), library.orientations[members[i]].double().expand(4, 3, 3), s)
        assert float(torch.rad2deg(angle).min()) < 1e-3  # the member itself is among the top four


def test_the_compiled_pass_ranks_as_the_torch_path():
    """Patterns unlike the library's (other orientations, a wider excitation, jittered, some disks lost, a
    spurious one): the same top four, in order, and the correlations of the whole raster's within 1e-3."""
    phase = _phase()
    library = build_library(phase, SearchConfig(size=3000, seed=4), SCORE)
    gen = torch.Generator().manual_seed(5)
    obs, mask = simulate_disks(random_rotations(200, seed=6).float(), phase.reflections, 0.035, 30, k_max=2.1,
                               r_min=0.1)
    obs = obs.clone()
    obs[..., :2] += 0.005 * torch.randn(obs[..., :2].shape, generator=gen)
    mask = mask & (torch.rand(mask.shape, generator=gen) > 0.2)
    obs[:, -1], mask[:, -1] = torch.tensor([0.7, -0.4, 0.5]), True  # one spurious disk each
    mask[0] = False  # a pattern without disks ranks nothing but must not fail
    fused = library_hypotheses(obs, mask, library, SCORE.kernel, SCORE.power, top=4, fused=True)
    reference = library_hypotheses(obs, mask, library, SCORE.kernel, SCORE.power, top=4, fused=False)
    assert fused.shape == reference.shape == (200, 4, 3, 3)
    assert bool(torch.equal(fused[1:], reference[1:]))
    # the correlations themselves, against the whole raster's
    wa = obs[..., 2].clamp_min(0).pow(SCORE.power) * mask
    index, value = library_fused.top_correlations(obs[1:], wa[1:], library, SCORE.kernel, 4)
    image = _rasters(obs[1:, :, :2], wa[1:], library.side, library.step, SCORE.kernel)
    full = (library.reader @ image.T.contiguous()).T / torch.sqrt((wa[1:] ** 2).sum(-1)[:, None] * library.bb).clamp_min(1e-30)
    assert float((value - full.gather(1, index)).abs().max()) < 1e-3
    assert bool((value[:, :-1] >= value[:, 1:]).all())  # best first
    assert float(value.min()) > 0.05  # not a comparison of zeros


def test_the_inverted_index_holds_every_disk_on_the_raster():
    library = build_library(_phase(), SearchConfig(size=500, seed=7), SCORE)
    start, orientation, weight = library.by_pixel
    on = (library.pixel < library.side**2) & (library.w.reshape(-1) > 0)
    assert int(start[-1]) == len(orientation) == int(on.sum())
    pixel = torch.repeat_interleave(torch.arange(library.side**2), torch.diff(start))
    rebuilt = torch.zeros(len(library.orientations), library.side**2)
    rebuilt.index_put_((orientation.long(), pixel), weight, accumulate=True)
    expected = torch.zeros_like(rebuilt)
    rows = torch.arange(len(library.orientations)).repeat_interleave(library.w.shape[1])[on]
    expected.index_put_((rows, library.pixel[on]), library.w.reshape(-1)[on], accumulate=True)
    assert torch.equal(rebuilt, expected)
