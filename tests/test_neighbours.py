"""The second look at unsure positions with their neighbours' answers (mapping/neighbours.py)."""

import warnings

import numpy as np
import pytest
import torch

from py4dstem_transformer.core.rotations import BEAM_FLIP, exp_so3, random_rotations, symmetry_min_angle
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.mapping.confidence import FEATURES
from py4dstem_transformer.mapping.neighbours import (NeighbourConfig, _break_ties, neighbour_answers,
                                                     neighbour_offsets, support)

from conftest import make_cu


def _turn(m, axis, deg):
    axis = torch.as_tensor(axis, dtype=torch.float64)
    return m @ exp_so3(axis / axis.norm() * np.radians(deg))


def test_neighbour_offsets_are_the_window_nearest_first():
    d = neighbour_offsets(1)
    assert len(d) == 8 and len({tuple(x) for x in d}) == 8 and not (d == 0).all(1).any()
    assert (np.abs(d[:4]).sum(1) == 1).all() and (np.abs(d[4:]).sum(1) == 2).all()  # edge-adjacent first
    assert len(neighbour_offsets(2)) == 24 and np.abs(neighbour_offsets(2)).max() == 2


def test_neighbour_answers_stay_inside_the_scan_and_count_only_sure_ones():
    shape = (3, 4)
    best = random_rotations(12, seed=1).numpy()
    phase, sure = np.zeros(12, np.int64), np.full(12, 0.95)
    sure[5] = 0.5  # (1, 1): not sure, never a candidate
    matrix, _, valid = neighbour_answers(np.array([0, 6]), shape, best, phase, sure, NeighbourConfig(sure=0.9))
    assert valid[0].sum() == 2  # corner (0, 0): (0, 1), (1, 0); (1, 1) is not sure
    assert valid[1].sum() == 7  # (1, 2): all 8 inside, one of them (1, 1) not sure
    d = neighbour_offsets(1)
    for j in np.flatnonzero(valid[1]):  # the matrices are those of the positions the offsets point at
        x, y = 1 + d[j, 0], 2 + d[j, 1]
        np.testing.assert_array_equal(matrix[1, j], best[x * 4 + y])


def test_support_counts_symmetry_equivalents_not_the_beam_flip():
    cu = make_cu()
    sym = torch.as_tensor(point_group_rotations(cu), dtype=torch.float64)
    m = random_rotations(1, seed=2)
    neighbours = torch.stack([sym[5] @ m[0],  # the same orientation, another symmetry-equivalent matrix
                              _turn(m, [1, 2, 3], 3.0)[0],  # 3 deg away
                              _turn(m, [1, 2, 3], 7.0)[0],  # 7 deg away
                              m[0] * torch.as_tensor(BEAM_FLIP, dtype=torch.float64)])[None]  # the beam flip
    valid = torch.ones(1, 4, dtype=torch.bool)
    assert support(m, neighbours, valid, sym).tolist() == [2]
    valid[0, 0] = False
    assert support(m, neighbours, valid, sym).tolist() == [1]


def test_a_near_tie_goes_to_the_match_more_sure_neighbours_agree_with():
    sym = torch.as_tensor(point_group_rotations(make_cu()), dtype=torch.float64)
    m = random_rotations(3, seed=4).float()
    rival = m * torch.as_tensor(BEAM_FLIP, dtype=torch.float32)
    matrix = torch.stack([m, rival], 1)[:, None]  # (3, P=1, K=2, 3, 3): the score prefers m
    raw = torch.tensor([[[0.80, 0.79]], [[0.80, 0.70]], [[0.80, 0.79]]])
    features = torch.rand(3, 1, 2, len(FEATURES))
    features[:, :, 0, FEATURES.index("margin")] = 0.01
    features[:, :, 1, FEATURES.index("margin")] = -0.01
    nb = rival.double()[:, None].expand(3, 8, 3, 3).clone().numpy()  # rows 0 and 1: the neighbours are the rival
    nb[2] = m[2].double().numpy()  # row 2: the neighbours agree with the first match
    valid, nb_phase = np.ones((3, 8), bool), np.zeros((3, 8), np.int64)

    class Phase:
        symmetry = sym

    out_m, out_raw, out_f = _break_ties(matrix, raw, features, nb, nb_phase, valid, [Phase], tie=0.03)
    assert torch.equal(out_m[0, 0, 0], rival[0]) and torch.equal(out_m[0, 0, 1], m[0])  # near tie: swapped
    assert out_raw[0, 0].tolist() == pytest.approx([0.79, 0.80])
    assert out_f[0, 0, 0, FEATURES.index("margin")] == pytest.approx(0.01)  # the tie's margin, not below it
    assert torch.equal(out_m[1], matrix[1]) and torch.equal(out_raw[1], raw[1])  # 0.10 apart: the score decides
    assert torch.equal(out_m[2], matrix[2])  # the neighbours agree with the first: nothing to change
    assert torch.equal(matrix[0, 0, 0], m[0])  # the inputs are left alone


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="radius"):
        NeighbourConfig(radius=0)
    with pytest.raises(ValueError, match="tie"):
        NeighbourConfig(tie=-0.1)


@pytest.fixture(scope="module")
def grain_scan():
    """An 8 x 8 scan of 3 grains of Cu, kinematic patterns from py4DSTEM's simulator, and its true orientations."""
    from py4dstem_transformer.benchmarks import robustness as R
    from py4dstem_transformer.benchmarks.grain_scan import grain_map, pack_scan, simulate_scan

    condition = R.Condition("kinematic", "kinematic", dynamical=False)
    grain, matrix = grain_map(8, 3, seed=5, spread_deg=0.2)  # two of the grains' beam flips are nearly ambiguous
    disks = simulate_scan(make_cu(), condition, matrix, seed=5)
    return pack_scan(disks, (8, 8), condition, seed=5), matrix, grain


def test_grain_map_is_grains_of_nearly_one_orientation(grain_scan):
    _, matrix, grain = grain_scan
    assert len(np.unique(grain)) == 3
    flat, g = torch.from_numpy(matrix.reshape(-1, 3, 3)), grain.ravel()
    np.testing.assert_allclose(flat.transpose(1, 2) @ flat, np.broadcast_to(np.eye(3), (64, 3, 3)), atol=1e-12)
    first = {k: int(np.flatnonzero(g == k)[0]) for k in range(3)}
    spread = np.degrees(symmetry_min_angle(flat, flat[[first[k] for k in g]]).numpy())
    assert spread.max() < 2.0  # within a grain: 0.2 deg per axis


def test_the_second_look_changes_only_what_more_sure_neighbours_agree_with(grain_scan):
    from py4dstem_transformer.mapping.mapper import TransformerOrientationMap
    from py4dstem_transformer.pretrained import load_pretrained

    bragg, truth, _ = grain_scan
    mapper = TransformerOrientationMap(make_cu(), load_pretrained("Cu"), precision="fp32")
    mapper.neighbour_config = NeighbourConfig(confidence=1.0, sure=0.5, tie=0.03)  # every position looked at
    before = bragg.raw[3, 4].data.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        alone = mapper.match_orientations(bragg, progress_bar=False, neighbours=False)
        alone = {k: getattr(alone, k).copy() for k in ("matrix", "corr")}
        look = mapper.match_orientations(bragg, progress_bar=False)
    np.testing.assert_array_equal(bragg.raw[3, 4].data, before)  # the user's peaks are left alone
    summary = look.second_look
    assert summary["looked"] <= summary["unsure"] == 64
    sym = torch.as_tensor(mapper.phases[0].rotations)
    a, b = torch.from_numpy(alone["matrix"][:, :, 0].reshape(-1, 3, 3)), torch.from_numpy(look.matrix[:, :, 0].reshape(-1, 3, 3))
    moved = np.degrees(symmetry_min_angle(a, b, sym).numpy()) > 5.0
    assert moved.sum() == summary["changed"]
    np.testing.assert_array_equal(summary["changed_map"], moved.reshape(8, 8))  # where the neighbours decided
    same = ~moved
    np.testing.assert_array_equal(look.matrix[:, :, 0].reshape(-1, 3, 3)[same], alone["matrix"][:, :, 0].reshape(-1, 3, 3)[same])
    np.testing.assert_array_equal(look.corr[:, :, 0].ravel()[same], alone["corr"][:, :, 0].ravel()[same])
    # every change goes to an orientation more of the (first pass's) sure neighbours agree with
    shape, sure = (8, 8), alone["corr"][:, :, 0].ravel()
    answers, _, valid = neighbour_answers(np.flatnonzero(moved), shape, a.numpy(), np.zeros(64, np.int64), sure,
                                          mapper.neighbour_config)
    assert moved.sum() >= 5  # this scan has two grains whose beam flip is nearly ambiguous: something to change
    nb, ok = torch.from_numpy(answers), torch.from_numpy(valid)
    assert (support(b[moved], nb, ok, sym) > support(a[moved], nb, ok, sym)).all()


def test_a_position_without_disks_gets_no_neighbours_answer():
    from py4dstem_transformer.benchmarks import robustness as R
    from py4dstem_transformer.benchmarks.grain_scan import grain_map, pack_scan, simulate_scan
    from py4dstem_transformer.mapping.mapper import TransformerOrientationMap
    from py4dstem_transformer.pretrained import load_pretrained

    condition = R.Condition("kinematic", "kinematic", dynamical=False)
    _, matrix = grain_map(4, 1, seed=6, spread_deg=0.2)  # one grain
    disks = simulate_scan(make_cu(), condition, matrix, seed=6)
    disks[5] = disks[5][:1]  # (1, 1): the direct beam only
    bragg = pack_scan(disks, (4, 4), condition, seed=6)
    mapper = TransformerOrientationMap(make_cu(), load_pretrained("Cu"), precision="fp32")
    mapper.neighbour_config = NeighbourConfig(confidence=1.0, sure=0.0)  # every neighbour counts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        alone = mapper.match_orientations(bragg, progress_bar=False, neighbours=False).matrix.copy()
        look = mapper.match_orientations(bragg, progress_bar=False)
    np.testing.assert_array_equal(look.matrix[1, 1], alone[1, 1])
    assert look.corr[1, 1, 0] == 0 and look.second_look["unsure"] == 15


def test_no_second_look_without_neighbours_or_refinement(grain_scan):
    from py4dstem_transformer.mapping.mapper import TransformerOrientationMap
    from py4dstem_transformer.pretrained import load_pretrained

    bragg = grain_scan[0]
    mapper = TransformerOrientationMap(make_cu(), load_pretrained("Cu"), precision="fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert mapper.match_orientations(bragg, progress_bar=False, neighbours=False).second_look is None
        assert mapper.match_orientations(bragg, progress_bar=False, refine=False).second_look is None
        mapper.neighbour_config = None
        assert mapper.match_orientations(bragg, progress_bar=False).second_look is None


@pytest.mark.slow
def test_the_grain_scan_benchmark_puts_acom_beside_on_the_same_positions(capsys, tmp_path):
    from py4dstem_transformer.benchmarks import grain_scan

    path = tmp_path / "g.json"
    report = grain_scan.main(["--condition", "kinematic", "--size", "6", "--grains", "2", "--seeds", "3", "--acom",
                              "--json", str(path)])
    (row,) = report["rows"]
    ours, alone, acom = row["ours"], row["alone"], row["acom"]
    assert ours["n"] == alone["n"] == acom["n"] == 36 and len(ours["errors_strict"]) == 36
    for key, other in (("ours_minus_alone", alone), ("ours_minus_acom", acom)):  # pattern by pattern, same positions
        assert row[key]["n"] == 36
        assert row[key]["difference"] == pytest.approx(ours["strict_5"] - other["strict_5"])
    assert set(ours["second_look"]) == {"unsure", "looked", "changed"} and alone["second_look"] is None
    assert "ours − ACOM" in capsys.readouterr().out and path.stat().st_size > 100
