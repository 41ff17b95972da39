"""The real-data benchmark's plumbing on small made-up scans (the measured file is used by tutorial 05 only)."""

import numpy as np
import pytest

from py4dstem_transformer.benchmarks import real_data as rd
from py4dstem_transformer.core.rotations import random_rotations
from py4dstem_transformer.io.peaks import braggvectors_from_pointlistarray, peaks_from_pointlistarray


def _pointlists(shape=(3, 4), seed=0):
    from emdfile import PointListArray

    dtype = np.dtype([("qx", np.float64), ("qy", np.float64), ("intensity", np.float64)])
    pla = PointListArray(dtype, shape, name="braggpeaks")
    rng = np.random.default_rng(seed)
    for i in range(shape[0]):
        for j in range(shape[1]):
            n = 1 + (i * shape[1] + j) % 5
            d = np.zeros(n, dtype)
            d["qx"], d["qy"], d["intensity"] = rng.uniform(-1.5, 1.5, n), rng.uniform(-1.5, 1.5, n), rng.random(n)
            pla[i, j].add(d)
    return pla


def test_braggvectors_from_pointlistarray_keep_the_vectors():
    pla = _pointlists()
    before = [pla[i, j].data.copy() for i in range(3) for j in range(4)]
    bv = braggvectors_from_pointlistarray(pla)
    assert bv.calstate["center"] and bv.calstate["pixel"]
    for i in range(3):
        for j in range(4):
            v = bv.get_vectors(i, j, center=True, ellipse=False, pixel=True, rotate=False)
            np.testing.assert_allclose(v.qx, pla[i, j].data["qx"])
            np.testing.assert_allclose(v.qy, pla[i, j].data["qy"])
            np.testing.assert_allclose(v.I, pla[i, j].data["intensity"])
    assert all(np.array_equal(b, pla[k // 4, k % 4].data) for k, b in enumerate(before))  # the input is not changed


def test_crop_and_positions_copy_the_right_pointlists():
    pla = _pointlists((5, 6))
    sub = rd.crop(pla, slice(1, 4), slice(2, 6))
    assert sub.shape == (3, 4)
    np.testing.assert_array_equal(sub[2, 3].data, pla[3, 5].data)
    sub[0, 0].data["qx"][:] = 99
    assert not (pla[1, 2].data["qx"] == 99).any()
    picked = rd._positions(pla, np.array([0, 7, 29]))
    assert picked.shape == (1, 3)
    np.testing.assert_array_equal(picked[0, 1].data, pla[1, 1].data)
    np.testing.assert_array_equal(peaks_from_pointlistarray(picked).counts, [len(pla[0, 0].data), len(pla[1, 1].data),
                                                                              len(pla[4, 5].data)])
    with pytest.raises(ValueError, match="empty crop"):
        rd.crop(pla, slice(5, 9), slice(0, 2))


def test_summary_and_reference_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    shape = (6, 7)
    grains = random_rotations(3, seed=4).numpy()
    matrix = np.where((np.arange(7) < 4)[None, :, None, None], grains[0], grains[1]) * np.ones(shape + (1, 1))
    phase = np.zeros(shape, int)
    ours = {"phase_index": phase, "matrix": matrix, "corr": np.full(shape, 0.9)}
    acom_matrix = matrix.copy()
    acom_matrix[0, 0] = grains[2]  # one position where ACOM disagrees
    acom_phase = phase.copy()
    acom_phase[5, 6] = -1  # and one it did not match
    acom = {"phase_index": acom_phase, "matrix": acom_matrix, "corr": rng.uniform(1, 3, shape), "plan_s": 1.5,
            "match_s": 20.0}
    cp = {"phase_index": phase, "weights": np.ones(shape + (1,)), "reliability": np.zeros(shape), "seconds": 2.0}
    s = rd.summarize(ours, acom, [np.eye(3)[None]], ["X"], cp)
    assert s["agreement_all"]["same_orientation"] == pytest.approx(40 / 42)
    assert s["agreement_all"]["same_phase"] == pytest.approx(41 / 42)
    assert s["coherence_ours"]["any_neighbour"] == 1.0 and s["coherence_acom"]["any_neighbour"] == pytest.approx(40 / 41)
    assert s["ours_vs_crystalphase_same_phase"] == 1.0 and s["acom_vs_crystalphase_same_phase"] == pytest.approx(41 / 42)
    assert [r["n"] for r in s["coherence_by_confidence"]] == [0, 0, 0, 0, 42]  # corr 0.9: the 0.9-1 bin
    path = str(tmp_path / "ref.npz")
    rd.save_reference(path, acom, cp)
    acom2, cp2 = rd.load_reference(path)
    np.testing.assert_array_equal(acom2["matrix"], acom_matrix)
    np.testing.assert_array_equal(cp2["phase_index"], phase)
    assert acom2["match_s"] == 20.0 and cp2["seconds"] == 2.0
