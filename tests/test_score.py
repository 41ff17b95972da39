"""Kinematic disks in torch agree with py4DSTEM; the correlation score behaves like a correlation."""

import numpy as np
import torch

from py4dstem_transformer.core.kinematics import Reflections, simulate_disks
from py4dstem_transformer.core.rotations import beam_flip, random_rotations
from py4dstem_transformer.mapping.score import SEPARATED_KERNELS, correlation

from conftest import make_cu, make_cu2o

KP = dict(kernel=0.04, power=0.5)  # the score's settings for the invariance tests (any will do)


def test_simulated_disks_are_the_same_in_cache_sized_chunks(monkeypatch):
    from py4dstem_transformer.core import kinematics

    reflections = Reflections.from_crystal(make_cu(), 2.0, 300e3)
    m = random_rotations(300, seed=1)
    limits = torch.randint(0, 40, (300,), generator=torch.Generator().manual_seed(0))
    calls = [dict(max_disks=32), dict(max_disks=limits), dict(max_disks=32, ordered=False, k_max=1.2, r_min=0.2)]
    whole = [simulate_disks(m, reflections, 0.03, return_index=True, **kw) for kw in calls]
    monkeypatch.setattr(kinematics, "CPU_CHUNK", 7 * len(reflections.g))  # 7 rows at a time: 43 chunks
    for kw, (disks, mask, index) in zip(calls, whole):
        d, k, i = simulate_disks(m, reflections, 0.03, return_index=True, **kw)
        assert d.shape == disks.shape and torch.equal(k, mask) and mask.any(1).float().mean() > 0.9
        assert torch.equal(i[k], index[mask])  # the same reflections, in the same order
        torch.testing.assert_close(d[k], disks[mask], rtol=0, atol=2e-6)  # placed by a smaller matmul


def test_simulated_disks_match_py4dstem():
    cu = make_cu()
    cu.setup_diffraction(300e3)
    cu.calculate_structure_factors(2.0)
    strongest = cu.struct_factors_int[np.linalg.norm(cu.g_vec_all, axis=0) > 1e-9].max()
    reflections = Reflections.from_crystal(make_cu(), 2.0, 300e3)
    m = random_rotations(60, seed=0)
    disks, mask = simulate_disks(m, reflections, 0.02, max_disks=128)
    for b in range(60):
        d = cu.generate_diffraction_pattern(orientation_matrix=m[b].numpy(), sigma_excitation_error=0.02, tol_intensity=0).data
        d = d[(d["h"] != 0) | (d["k"] != 0) | (d["l"] != 0)]
        ref = np.stack([d["qx"], d["qy"], d["intensity"] / strongest], 1)
        got = disks[b][mask[b]].double().numpy()
        assert len(got) == len(ref)
        key = lambda a: a[np.lexsort(np.round(a[:, :2], 4).T)]  # noqa: E731
        np.testing.assert_allclose(key(got), key(ref), atol=2e-6)


def test_correlation_properties():
    reflections = Reflections.from_crystal(make_cu(), 2.0, 300e3)
    m = random_rotations(40, seed=1)
    disks, mask = simulate_disks(m, reflections, 0.02, max_disks=48)
    same = correlation(disks, mask, disks, mask, **KP)
    assert torch.allclose(same, torch.ones(40), atol=1e-5)
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(correlation(disks[:, perm], mask[:, perm], disks, mask, **KP), same, atol=1e-5)
    flipped, fmask = simulate_disks(beam_flip(m), reflections, 0.02, max_disks=48)
    other, omask = simulate_disks(random_rotations(40, seed=2), reflections, 0.02, max_disks=48)
    near, far = correlation(disks, mask, flipped, fmask, **KP), correlation(disks, mask, other, omask, **KP)
    assert (near <= 1 + 1e-6).all() and float(near.median()) > float(far.median()) + 0.2
    # several candidates at once equal one at a time
    both = correlation(disks, mask, torch.stack([flipped, other], 1), torch.stack([fmask, omask], 1), **KP)
    assert torch.allclose(both, torch.stack([near, far], 1), atol=1e-6)
    empty = torch.zeros_like(mask)
    assert (correlation(disks, empty, disks, mask, **KP) == 0).all()


def test_disk_separation_bound_holds_and_makes_the_self_overlap_shortcut_exact():
    """Cu's disks in one pattern lie at least ``min_disk_separation`` apart (checked on 300 orientations),
    far enough that ``<sim, sim>`` is its diagonal; Cu2O's can crowd, and it keeps the full sum."""
    sigma, kernel, power = 0.04, 0.03, 0.25  # the mapper's defaults
    reflections = Reflections.from_crystal(make_cu(), 2.1, 300e3)
    bound = reflections.min_disk_separation(sigma)
    assert bound > SEPARATED_KERNELS * kernel
    m = random_rotations(300, seed=4)
    disks, mask = simulate_disks(m, reflections, sigma, max_disks=48, k_max=2.1)
    for b in range(300):
        xy = disks[b][mask[b], :2].double()
        d = torch.cdist(xy, xy) + torch.eye(len(xy), dtype=torch.float64) * 1e9
        assert float(d.min()) >= bound
    observed = disks + torch.randn(disks.shape, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.01, 0.01, 0.0])
    candidates = torch.stack([disks, simulate_disks(beam_flip(m), reflections, sigma, 48, 2.1)[0]], 1)
    candidate_mask = torch.stack([mask, simulate_disks(beam_flip(m), reflections, sigma, 48, 2.1)[1]], 1)
    full = correlation(observed, mask, candidates, candidate_mask, kernel, power)
    short = correlation(observed, mask, candidates, candidate_mask, kernel, power, separation=bound)
    assert torch.allclose(full, short, atol=1e-6)
    assert Reflections.from_crystal(make_cu2o(), 2.1, 300e3).min_disk_separation(sigma) <= SEPARATED_KERNELS * kernel
