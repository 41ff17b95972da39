"""TransformerOrientationMap: native output that py4DSTEM's downstream tools accept, honest corr."""

import numpy as np
import pytest
import torch

from py4dstem_transformer.mapping.config import Query
from py4dstem_transformer.mapping.mapper import TransformerOrientationMap
from py4dstem_transformer.mapping.pipeline import map_tokens
from py4dstem_transformer.mapping.predict import Network
from py4dstem_transformer.model.model import ModelConfig, OrientationModel
from py4dstem_transformer.core.rotations import beam_flip, symmetry_min_angle
from py4dstem_transformer.core.symmetry import point_group_rotations

from conftest import KinematicSet, kinematic_scan, make_cu, scan_from_patterns


@pytest.fixture(scope="module")
def test_scan():
    truth = KinematicSet(60, seed=42)
    return truth, kinematic_scan(truth, (6, 10))


@pytest.fixture(scope="module")
def mapped(trained, test_scan):
    truth, scan = test_scan
    cu = make_cu()
    mapper = TransformerOrientationMap(cu, trained)
    om = mapper.match_orientations(scan, num_matches_return=2, progress_bar=False)
    return mapper, om, truth


def errors(om, truth, flip):
    s = point_group_rotations(make_cu())
    pred = torch.as_tensor(om.matrix[:, :, 0].reshape(-1, 3, 3))
    return torch.rad2deg(symmetry_min_angle(pred, torch.as_tensor(truth.orientation_matrices), s, flip)).numpy()


@pytest.mark.slow
def test_native_orientation_map(mapped):
    from py4DSTEM.process.diffraction.utils import OrientationMap

    mapper, om, truth = mapped
    assert isinstance(om, OrientationMap) and om.matrix.shape == (6, 10, 2, 3, 3)
    assert mapper.crystal.orientation_map is om
    m = om.matrix.reshape(-1, 3, 3)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-6)
    np.testing.assert_allclose(m.transpose(0, 2, 1) @ m, np.broadcast_to(np.eye(3), m.shape), atol=1e-6)
    assert np.abs(om.family).sum() > 0  # symmetry-reduced with pymatgen, as ACOM fills it
    assert (om.corr[..., 0] >= om.corr[..., 1]).all()  # matches ranked by corr


@pytest.mark.slow
def test_accuracy_beats_chance_and_flip_resolution_helps(mapped, test_scan):
    from py4dstem_transformer.model.tokens import braggvectors_to_tokens

    mapper, om, truth = mapped
    assert np.median(errors(om, truth, flip=True)) < 12
    # the network alone picks the beam flip at chance; the physics arbiter does better
    s = point_group_rotations(make_cu())
    network = Network(mapper.model, mapper.device)(braggvectors_to_tokens(test_scan[1]))[0].double()
    net_err = torch.rad2deg(symmetry_min_angle(network, torch.as_tensor(truth.orientation_matrices), s)).numpy()
    assert (errors(om, truth, flip=False) < 5).mean() > (net_err < 5).mean()
    first, second = om.matrix[:, :, 0].reshape(-1, 3, 3), om.matrix[:, :, 1].reshape(-1, 3, 3)
    s = point_group_rotations(make_cu())
    apart = torch.rad2deg(symmetry_min_angle(torch.as_tensor(first), torch.as_tensor(second), s)).numpy()
    assert (apart[om.corr[:, :, 1].ravel() > 0] > 5).all()  # later matches are distinct orientations


@pytest.mark.slow
def test_corr_flags_wrong_answers(mapped):
    mapper, om, truth = mapped
    err = errors(om, truth, flip=False)
    corr = om.corr[:, :, 0].ravel()
    right, wrong = corr[err < 5], corr[err > 5]
    assert len(right) > 3 and len(wrong) > 3
    assert np.median(right) > np.median(wrong) + 0.1


class LookupModel(OrientationModel):
    """Answers with a fixed matrix per pattern, recognised by a fingerprint of its tokens."""

    def __init__(self, tokens, matrices):
        super().__init__(ModelConfig(d_model=8, n_layers=1, n_heads=1, d_ff=8))
        self.table = {self.key(t, m): r for t, m, r in zip(tokens.tokens, tokens.mask, matrices)}

    @staticmethod
    def key(tokens, mask):
        return round(float((tokens[:, 0] * tokens[:, 2] * mask).sum()), 3)

    def forward(self, tokens, mask):
        return {"matrix": torch.stack([self.table[self.key(t, m)] for t, m in zip(tokens.float(), mask)])}


def test_true_orientation_beats_its_beam_flip():
    """With the network's answer replaced by the flipped truth, the arbiter must put the truth first."""
    from py4dstem_transformer.model.tokens import braggvectors_to_tokens

    truth = KinematicSet(30, seed=8)
    scan = kinematic_scan(truth, (5, 6))
    flipped = beam_flip(torch.as_tensor(truth.orientation_matrices, dtype=torch.float32))
    model = LookupModel(braggvectors_to_tokens(scan), flipped)
    mapper = TransformerOrientationMap(make_cu(), model, precision="fp32")
    # scored with the data's own kinematic law (sigma 0.02, I ** 0.5) the truth reproduces its disks: corr ~1
    matched = TransformerOrientationMap(make_cu(), model, precision="fp32", sigma_excitation_error=0.02, corr_power=0.5)
    for refine, tol in ((False, 1e-3), (True, 0.05)):
        om = mapper.match_orientations(scan, progress_bar=False, refine=refine)
        err = errors(om, truth, flip=False)
        assert (err < tol).mean() > 0.9  # exact kinematic disks: the truth scores best, its flip less
        om = matched.match_orientations(scan, progress_bar=False, refine=refine)
        assert (errors(om, truth, flip=False) < tol).mean() > 0.9
        assert (om.corr[:, :, 0] > 0.95).mean() > 0.9  # (the simulated set reaches slightly further out)


@pytest.mark.slow
def test_min_number_peaks_and_empty_positions_give_corr_zero(trained):
    truth = KinematicSet(4, seed=1)
    o = truth.offsets
    lists = [np.stack([truth.qx[o[i]:o[i + 1]], truth.qy[o[i]:o[i + 1]], truth.intensity[o[i]:o[i + 1]]], 1) for i in range(4)]
    lists[1] = lists[1][:1]  # direct beam + 1 disk = 2 peaks < 3
    lists[2] = np.zeros((0, 3))  # direct beam only
    scan = scan_from_patterns(lists, (2, 2))
    om = TransformerOrientationMap(make_cu(), trained).match_orientations(scan, progress_bar=False)
    corr = om.corr[:, :, 0].ravel()
    assert corr[1] == 0 and corr[2] == 0 and corr[0] > 0 and corr[3] > 0
    cu = make_cu()
    mapper = TransformerOrientationMap(cu, trained)
    om1 = mapper.match_orientations(scan, min_number_peaks=1, progress_bar=False)
    assert om1.corr[0, 1, 0] > 0 and om1.corr[1, 0, 0] == 0  # no disk left after the direct beam


@pytest.mark.slow
def test_downstream_py4dstem_tools_accept_it(mapped, test_scan, tmp_path):
    from py4DSTEM.process.diffraction import CrystalPhase

    mapper, om, truth = mapped
    cu = mapper.crystal
    images = cu.plot_orientation_maps(om, returnfig=False)
    assert images.shape[:2] == (6, 10) and np.isfinite(images).all()
    xmap = cu.orientation_map_to_orix_CrystalMap(om)
    assert xmap.shape == (10, 6)
    cu.save_ang_file(str(tmp_path / "map.ang"), om)
    assert (tmp_path / "map.ang").stat().st_size > 1000
    phase = CrystalPhase([cu], crystal_names=["Cu"])
    phase.quantify_phase(test_scan[1], progress_bar=False)  # re-simulates from our matrices
    assert phase.phase_weights.shape == (6, 10, 2) and (phase.phase_weights.sum(-1) > 0).mean() > 0.5
    phase.plot_dominant_phase(use_correlation_scores=True, returnfig=False)
    assert phase.phase_rgb.shape == (6, 10, 3)
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.slow
def test_users_inputs_are_not_modified(trained, test_scan):
    truth, scan = test_scan
    raw = [pl.data.copy() for row in scan._v_uncal._pointlists for pl in row]
    cu = make_cu()
    cu.setup_diffraction(300e3)
    TransformerOrientationMap(cu, trained).match_orientations(scan, progress_bar=False)
    assert all(np.array_equal(a, pl.data) for a, pl in zip(raw, (pl for row in scan._v_uncal._pointlists for pl in row)))
    assert float(cu.accel_voltage) == 300e3 and not hasattr(cu, "orientation_ref")


@pytest.mark.slow
def test_single_pattern(trained):
    truth = KinematicSet(1, seed=3)
    cu = make_cu()
    cu.setup_diffraction(300e3)
    cu.calculate_structure_factors(2.0)
    pattern = cu.generate_diffraction_pattern(orientation_matrix=truth.orientation_matrices[0], sigma_excitation_error=0.02)
    orientation = TransformerOrientationMap(make_cu(), trained).match_single_pattern(pattern, num_matches_return=2)
    assert orientation.matrix.shape == (2, 3, 3) and orientation.corr[0] >= orientation.corr[1] > 0


@pytest.mark.slow
def test_wrong_crystal_or_voltage_is_refused(trained):
    from py4DSTEM.process.diffraction import Crystal

    al = Crystal(make_cu().positions, 13, 4.05)
    with pytest.raises(ValueError, match="does not match the cell"):
        TransformerOrientationMap(al, trained)
    wrong_z = Crystal(make_cu().positions, 28, 3.615)
    with pytest.raises(ValueError, match="atoms"):
        TransformerOrientationMap(wrong_z, trained)
    cu = make_cu()
    cu.setup_diffraction(200e3)
    with pytest.raises(ValueError, match="200 kV"):
        TransformerOrientationMap(cu, trained)
    with pytest.raises(ValueError, match="num_matches_return"):
        TransformerOrientationMap(make_cu(), trained).match_orientations(kinematic_scan(KinematicSet(4, seed=0), (2, 2)),
                                                                         num_matches_return=3, inversion_symmetry=False)


@pytest.mark.slow
def test_repeated_hypotheses_are_refined_once(trained):
    """Test-time rotations of a sparse pattern often give the same orientation back: symmetry-equivalent,
    beam-flipped or within 1.5 deg of an earlier hypothesis, it is not refined again; a distinct one is."""
    from py4dstem_transformer.core.rotations import exp_so3, random_rotations, rotation_about_z
    from py4dstem_transformer.mapping.candidates import distinct_hypotheses

    mapper = TransformerOrientationMap(make_cu(), trained)
    m = random_rotations(6, seed=3).float()
    sym = torch.as_tensor(mapper.symmetry, dtype=torch.float32)
    tilt = exp_so3(torch.tensor([[np.radians(10.0), 0.0, 0.0]]).float())[0]
    hypotheses = torch.stack([m, m @ rotation_about_z(torch.tensor(np.radians(0.8))).float(), sym[5] @ m,
                              beam_flip(m), m @ tilt, sym[7] @ m @ tilt], 1)  # (6, 6, 3, 3)
    keep = distinct_hypotheses(hypotheses, mapper.phases[0].symmetry, mapper.config.repeat_deg)
    assert keep.tolist() == [[True, False, False, False, True, False]] * 6


def _constant_calibration(p):
    """A calibration that calls every answer right with probability ``p``."""
    from py4dstem_transformer.mapping.confidence import FEATURES, Calibration

    F = len(FEATURES)
    return Calibration((0.0,) * F, (1.0,) * F, ((0.0,) * F,), (0.0,), (0.0,), float(np.log(p / (1 - p))), {}, FEATURES)


def _run_logged(mapper, tokens, calibration, log, num_matches=1):
    """The pipeline with ``mapper``'s settings under ``calibration``, logging every network call's tokens."""
    from dataclasses import replace

    class Logged(Network):
        def __call__(self, t):
            log.append(t)
            return super().__call__(t)

    phases = tuple(replace(p, calibration=calibration) for p in mapper.phases)
    return map_tokens(tokens, Logged(mapper.model, mapper.device, mapper.precision), phases, mapper.config,
                      Query(num_matches), 256)


@pytest.mark.slow
def test_patterns_with_too_few_disks_are_not_turned(trained):
    """Below ``sparse_min_disks`` a pattern is mapped once, however unsure its answer."""
    from conftest import kinematic_tokens

    _, tokens, _ = kinematic_tokens(24, seed=8)
    least = int(np.median(tokens.counts.numpy()))
    mapper = TransformerOrientationMap(make_cu(), trained, sparse_disks=1000, sparse_turns=3, sparse_min_disks=least,
                                       polish_config=None, precision="fp32", sparse_confidence=0.85)
    calls = []
    _run_logged(mapper, tokens, _constant_calibration(0.5), calls)  # every answer unsure
    few, enough = sorted(c for c in tokens.counts.tolist() if c < least), sorted(c for c in tokens.counts.tolist() if c >= least)
    assert few and enough and [sorted(t.counts.tolist()) for t in calls] == [few, enough, enough, enough]


@pytest.mark.slow
def test_sure_sparse_patterns_are_not_turned(trained):
    """With a calibration, a sparse pattern is turned only if its unturned answer is unsure; the unsure ones
    reuse the first pass's refined candidates and end where turning every pattern ends."""
    from conftest import kinematic_tokens

    _, tokens, _ = kinematic_tokens(24, seed=8)
    results, calls = {}, {}
    for name, sure, threshold in (("sure", 0.9, 0.85), ("unsure", 0.8, 0.85), ("always", 0.9, 1.0)):
        mapper = TransformerOrientationMap(make_cu(), trained, sparse_disks=1000, sparse_turns=3, polish_config=None,
                                           precision="fp32", sparse_confidence=threshold, search=None)  # turns only
        calls[name] = []
        results[name] = _run_logged(mapper, tokens, _constant_calibration(sure), calls[name], num_matches=2)
    lengths = {name: [len(t) for t in log] for name, log in calls.items()}
    assert lengths["sure"] == [24] and lengths["unsure"] == [24, 24, 24] and lengths["always"] == [24, 24, 24]
    # the same orientations (candidates that converge together tie to float noise and may swap, as
    # symmetry-equivalent matrices or within a hundredth of a degree) and the same raw scores
    s = torch.as_tensor(TransformerOrientationMap(make_cu(), trained).symmetry)
    apart = torch.rad2deg(symmetry_min_angle(torch.as_tensor(results["unsure"].matrix),
                                             torch.as_tensor(results["always"].matrix), s))
    assert float(apart.max()) < 0.02
    np.testing.assert_allclose(results["unsure"].score, results["always"].score, atol=1e-5)
    unturned = TransformerOrientationMap(make_cu(), trained, sparse_disks=1000, sparse_turns=1, polish_config=None,
                                         precision="fp32", search=None)
    np.testing.assert_allclose(results["sure"].matrix,
                               _run_logged(unturned, tokens, _constant_calibration(0.9), [], num_matches=2).matrix, atol=1e-5)


def test_a_pointlistarray_of_calibrated_peaks_maps_like_the_braggvectors():
    """``crystal.match_orientations`` also takes a PointListArray of calibrated peaks (what py4DSTEM.read gives for
    older files, e.g. py4DSTEM's own phase-mapping test data); so does the drop-in."""
    import py4DSTEM

    scan = kinematic_scan(KinematicSet(6, seed=4), (2, 3))
    pla = py4DSTEM.PointListArray(dtype=[("qx", float), ("qy", float), ("intensity", float)], shape=(2, 3))
    for i in range(2):
        for j in range(3):
            v = scan.cal[i, j]
            pla.get_pointlist(i, j).add_data_by_field([v.qx, v.qy, v.I])
    mapper = TransformerOrientationMap.pretrained("Cu")
    a = mapper.match_orientations(scan, progress_bar=False)
    b = mapper.match_orientations(pla, progress_bar=False)
    # the same peaks to float32 rounding (BraggVectors are calibrated after the float32 cast, these before it)
    np.testing.assert_allclose(b.matrix, a.matrix, atol=1e-4)
    np.testing.assert_allclose(b.corr, a.corr, atol=0.01)
    wrong = py4DSTEM.PointListArray(dtype=[("x", float), ("y", float)], shape=(1, 1))
    with pytest.raises(ValueError, match=r"fields \['x', 'y'\], not \['qx', 'qy', 'intensity'\]"):
        mapper.match_orientations(wrong, progress_bar=False)


def test_search_confidence_one_searches_every_pattern(trained, monkeypatch):
    """The library search takes the patterns less sure than ``search_confidence``; 1 (or more) takes every one,
    however sure (what catches a confident beam flip, docs/benchmarks.md)."""
    import py4dstem_transformer.mapping.pipeline as pipeline
    from conftest import kinematic_tokens
    from py4dstem_transformer.mapping.config import SearchConfig

    _, tokens, _ = kinematic_tokens(12, seed=9)
    searched = []
    real = pipeline.library_hypotheses

    def spy(observed, mask, *args, **kwargs):
        searched.append(len(observed))
        return real(observed, mask, *args, **kwargs)

    monkeypatch.setattr(pipeline, "library_hypotheses", spy)
    for threshold in (0.85, 1.0):
        mapper = TransformerOrientationMap(make_cu(), trained, polish_config=None, precision="fp32", sparse_turns=1,
                                           search=SearchConfig(size=300, top=2), search_confidence=threshold)
        assert mapper.config.search.confidence == threshold and mapper.config.search.size == 300
        searched.clear()
        _run_logged(mapper, tokens, _constant_calibration(0.99), [])  # every answer sure
        eligible = int((tokens.counts >= mapper.config.search.min_disks).sum())
        assert sum(searched) == (0 if threshold < 1 else eligible) and (threshold < 1 or eligible > 0)


def test_sure_patterns_with_disks_off_their_lattice_are_searched(trained, monkeypatch):
    """``search_off_lattice``: a sure answer is searched too where the pattern holds disks off its lattice (here a
    false disk, as bright as half the brightest, added to half the patterns); 1 (the default) never."""
    import py4dstem_transformer.mapping.pipeline as pipeline
    from py4dstem_transformer.core.kinematics import simulate_disks
    from py4dstem_transformer.mapping.config import SearchConfig
    from py4dstem_transformer.mapping.lattice_check import off_lattice_share
    from py4dstem_transformer.mapping.score import tokens_to_xy
    from py4dstem_transformer.model.tokens import tokenize

    from conftest import points_off_lattice

    ks, n = KinematicSet(12, seed=9), 12
    mapper = TransformerOrientationMap(make_cu(), trained, polish_config=None, precision="fp32", sparse_turns=1,
                                       search=SearchConfig(size=300, top=2))
    phase = mapper.phases[0]
    truth = torch.as_tensor(ks.orientation_matrices).float()
    lattice, on = simulate_disks(truth[: n // 2], phase.reflections, 0.04, 512, **phase.window)
    false = points_off_lattice(lattice, on, 0.15, (0.4, 1.8), seed=10).tolist()  # well away from the true lattice
    qx, qy, inten, counts = [], [], [], []
    for i in range(n):
        a, b = ks.offsets[i], ks.offsets[i + 1]
        x, y, w = list(ks.qx[a:b]), list(ks.qy[a:b]), list(ks.intensity[a:b])
        if i < n // 2:  # a false disk, as bright as half the brightest
            x, y, w = x + [false[i][0]], y + [false[i][1]], w + [0.5 * max(w)]
        qx += x; qy += y; inten += w; counts.append(len(x))
    tokens = tokenize(torch.tensor(qx), torch.tensor(qy), torch.tensor(inten), torch.tensor(counts))

    searched = []
    real = pipeline.library_hypotheses

    def spy(observed, mask, *args, **kwargs):
        searched.append((observed.clone(), mask.clone()))
        return real(observed, mask, *args, **kwargs)

    monkeypatch.setattr(pipeline, "library_hypotheses", spy)
    sure = _constant_calibration(0.99)  # every answer sure: only the lattice check can send one to the search
    _run_logged(mapper, tokens, sure, [])
    assert searched == []  # off_lattice = 1: never
    # the answers the gate sees (the search comes last), and which of them leave more than 3% off their lattice
    first = _run_logged(TransformerOrientationMap(make_cu(), trained, polish_config=None, precision="fp32",
                                                  sparse_turns=1, search=None), tokens, sure, [])
    share = off_lattice_share(tokens_to_xy(tokens.tokens), tokens.mask, torch.as_tensor(first.matrix[:, 0, 0]).float(),
                              phase, 0.04, 2 * mapper.config.score.kernel, mapper.config.score.power)
    mapper = TransformerOrientationMap(make_cu(), trained, polish_config=None, precision="fp32", sparse_turns=1,
                                       search=SearchConfig(size=300, top=2), search_off_lattice=0.03)
    assert mapper.config.search.off_lattice == 0.03
    _run_logged(mapper, tokens, sure, [])
    rows = [o[k, m[k], :2] for o, m in searched for k in range(len(o))]  # each searched pattern's disks
    assert len(rows) == int((share > 0.03).sum()) and len(rows) < n
    for p in false:  # every pattern with a false disk was searched
        assert any(bool((torch.linalg.vector_norm(r - torch.tensor(p), dim=-1) < 1e-4).any()) for r in rows)
