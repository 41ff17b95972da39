"""The fundamental zone of beam directions for every crystallographic point group, orix as the oracle.

orix lists the 32 point groups, with the monoclinic (2, m, 2/m along x, y or z) and trigonal (321, 312)
settings: 38 groups. For each, dynamical and kinematic, the zone of :func:`fundamental_zone` must meet
every orbit of the direction group exactly once (no gap, no double cover), hold 1/|H| of the sphere like
orix's own fundamental sector of the same group, and be covered by its grid.
"""

import numpy as np
import pytest

orix_symmetry = pytest.importorskip("orix.quaternion.symmetry")
from orix.vector import Vector3d  # noqa: E402

from py4dstem_transformer.core.zone_axes import fundamental_zone, pattern_symmetry_from_operations  # noqa: E402

GROUPS = list(orix_symmetry._groups)


def operations(group) -> np.ndarray:
    """(K, 3, 3) operations of an orix point group (improper ones as -R), identity first."""
    r = group.to_matrix()
    ops = np.where(np.asarray(group.improper)[:, None, None], -r, r)
    first = np.argmin(np.linalg.norm(ops - np.eye(3), axis=(1, 2)))
    return np.concatenate([ops[first:first + 1], np.delete(ops, first, axis=0)])


def directions(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_orix_lists_every_point_group_and_setting():
    assert len(GROUPS) == 38 and {g.name for g in GROUPS} >= {"mm2", "321", "312", "-3m", "6/mmm", "2/m", "m-3m"}


@pytest.mark.parametrize("dynamical", [True, False])
@pytest.mark.parametrize("group", GROUPS, ids=[g.name for g in GROUPS])
def test_fundamental_zone_of_every_point_group(group, dynamical):
    sym = pattern_symmetry_from_operations(operations(group), dynamical)
    centro = bool(np.asarray(group.improper).any() and np.any(np.all(np.abs(operations(group) + np.eye(3)) < 1e-9,
                                                                         axis=(1, 2))))
    # the direction group (core.zone_axes): a centrosymmetric crystal's Laue group (the loader supplies the
    # mirror copies); otherwise the rotations leaving its patterns unchanged, which kinematic patterns (Friedel)
    # take from the Laue group and Bloch-wave patterns from the point group itself
    oracle = group if centro else (group.laue if not dynamical else group).proper_subgroup
    zone = fundamental_zone(sym)
    assert len(zone.group) == oracle.size
    v = directions(400, 1)
    images = np.einsum("hij,nj->nhi", zone.group, v)  # (N, H, 3)
    inside = np.array([zone.contains(x).sum() for x in images])
    assert np.all(inside == 1)  # every orbit met once: no gap, no double cover
    assert zone.contains(zone.reduce(v)).all()
    many = directions(100_000, 2)
    ours = zone.contains(many).mean()
    theirs = (Vector3d(many) < oracle.fundamental_sector).mean()
    p = 1 / oracle.size
    sd = max(np.sqrt(p * (1 - p) / len(many)), 1e-9)  # sampling noise of a fraction of 100,000 directions
    assert abs(ours - p) < 4.5 * sd and abs(theirs - p) < 4.5 * sd and abs(ours - theirs) < 6 * sd
    grid_images = np.einsum("hij,zj->hzi", zone.group, zone.grid(3.0)).reshape(-1, 3)
    nearest = np.degrees(np.arccos(np.clip((v @ grid_images.T).max(1), -1, 1)))
    assert nearest.max() < 3.0
