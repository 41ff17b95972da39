"""Kinematic disks in torch agree with py4DSTEM; the correlation score behaves like a correlation."""

import numpy as np
import torch

from py4dstem_transformer.kinematics import Reflections, simulate_disks
from py4dstem_transformer.rotations import beam_flip, random_rotations
from py4dstem_transformer.score import correlation

from conftest import make_cu


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
    same = correlation(disks, mask, disks, mask)
    assert torch.allclose(same, torch.ones(40), atol=1e-5)
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(correlation(disks[:, perm], mask[:, perm], disks, mask), same, atol=1e-5)
    flipped, fmask = simulate_disks(beam_flip(m), reflections, 0.02, max_disks=48)
    other, omask = simulate_disks(random_rotations(40, seed=2), reflections, 0.02, max_disks=48)
    near, far = correlation(disks, mask, flipped, fmask), correlation(disks, mask, other, omask)
    assert (near <= 1 + 1e-6).all() and float(near.median()) > float(far.median()) + 0.2
    # several candidates at once equal one at a time
    both = correlation(disks, mask, torch.stack([flipped, other], 1), torch.stack([fmask, omask], 1))
    assert torch.allclose(both, torch.stack([near, far], 1), atol=1e-6)
    empty = torch.zeros_like(mask)
    assert (correlation(disks, empty, disks, mask) == 0).all()
