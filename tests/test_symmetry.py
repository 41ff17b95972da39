"""Point-group rotations in py4DSTEM's Cartesian crystal frame."""

import numpy as np
import pytest
import torch

from py4dstem_transformer.core.symmetry import check_structure_factor_invariance, point_group_rotations

from conftest import make_cu, make_cu2o, make_mg, make_zns


@pytest.mark.parametrize("make, order", [(make_cu, 24), (make_cu2o, 24), (make_zns, 12), (make_mg, 12)])
def test_order_and_group_axioms(make, order):
    s = point_group_rotations(make())
    assert s.shape == (order, 3, 3) and s.dtype == torch.float64
    assert torch.allclose(s[0], torch.eye(3, dtype=torch.float64))
    assert torch.allclose(s.transpose(-1, -2) @ s, torch.eye(3, dtype=torch.float64).expand_as(s), atol=1e-10)
    assert torch.allclose(torch.linalg.det(s), torch.ones(order, dtype=torch.float64))
    # closed under composition: every product is again in the set
    prod = (s[:, None] @ s[None]).reshape(-1, 1, 9)
    assert (torch.cdist(prod, s.reshape(1, -1, 9)).amin(-1) < 1e-8).all()


@pytest.mark.parametrize("make", [make_cu, make_zns, make_mg])
def test_rotations_leave_structure_factors_invariant_and_crystal_untouched(make):
    crystal = make()
    before = set(vars(crystal))
    s = point_group_rotations(crystal)
    assert set(vars(crystal)) == before  # nothing computed on the user's crystal
    check_structure_factor_invariance(crystal, s.numpy())  # raises if not


@pytest.mark.parametrize("make, degrees", [(make_mg, 90.0), (make_cu, 30.0)])
def test_a_rotation_that_is_not_a_symmetry_is_caught(make, degrees):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    about_z = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="does not leave the structure factors invariant"):
        check_structure_factor_invariance(make(), about_z[None])


def test_invariance_check_is_blind_to_friedel_pairs():
    # |F|^2 obeys Friedel's law, so the check sees the Laue group: the 4-fold about z, a symmetry
    # of m-3m but not of zinc blende (-43m), passes it. point_group_rotations must still not list it.
    zns = make_zns()
    four_fold = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    check_structure_factor_invariance(zns, four_fold[None])
    s = point_group_rotations(zns).numpy()
    assert np.linalg.norm(s - four_fold, axis=(1, 2)).min() > 0.5


def test_hexagonal_frame_matches_py4dstem_symmetry_operators():
    pytest.importorskip("pymatgen")
    mg = make_mg()
    ours = point_group_rotations(mg).numpy()
    mg.calculate_structure_factors(1.5)
    mg.orientation_plan(zone_axis_range="auto", calculate_correlation_array=False, progress_bar=False)
    theirs = np.asarray(mg.symmetry_operators)
    theirs = theirs[np.linalg.det(theirs) > 0]
    dist = np.linalg.norm(ours.reshape(-1, 1, 9) - theirs.reshape(1, -1, 9), axis=-1)
    assert len(theirs) == len(ours) and (dist.min(1) < 1e-6).all()


def test_cubic_operations_are_the_signed_permutations():
    s = point_group_rotations(make_cu()).numpy()
    assert np.allclose(np.abs(s).sum(1), 1) and np.allclose(np.round(s), s, atol=1e-12)
