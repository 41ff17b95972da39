"""Batched disk detection: each step against py4DSTEM / scipy, the whole finder against py4DSTEM's
``find_Bragg_disks`` on noisy rendered patterns, streaming, containers and errors."""

import contextlib
import io
import itertools

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

import py4dstem_transformer  # noqa: F401  (registers DataCube.find_Bragg_disks_batched)
from py4dstem_transformer import find_bragg_disks
from py4dstem_transformer.detection.config import DiskDetectionConfig
from py4dstem_transformer.detection.correlate import smooth, template_spectrum
from py4dstem_transformer.detection.detect import detect_batch
from py4dstem_transformer.detection.fused_multicorr import refine_multicorr_fused
from py4dstem_transformer.detection.maxima import filter_maxima, local_maxima
from py4dstem_transformer.detection.subpixel import dirichlet, refine_multicorr, refine_poly
from py4dstem_transformer.simulation.images import render_patterns, simulate_datacube

from conftest import make_cu

TUTORIAL = dict(sigma_cc=1, minRelativeIntensity=0, minPeakSpacing=8, edgeBoundary=4, maxNumPeaks=80,
                minAbsoluteIntensity=2.5)


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def scan():
    """A 10 x 10 Cu polycrystal rendered on a 96 x 96 detector, and a kernel from its vacuum (tutorial 04's recipe)."""
    datacube, truth, disks = simulate_datacube([make_cu()], (10, 10), (96, 96), num_grains=7, seed=5)
    probe = _quiet(datacube.get_vacuum_probe, ROI=np.isnan(truth.thickness))
    alpha, px0, py0 = probe.measure_disk(plot=False)
    kernel = probe.get_kernel(mode="sigmoid", origin=(px0, py0), radii=(alpha, 3 * alpha))
    return datacube, kernel, truth, disks


# --- the steps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,sigma", [((3, 64, 48), 2.0), ((2, 20, 13), 1.0), ((2, 5, 7), 3.0), ((1, 4, 4), 2.5)])
def test_smooth_is_scipy_gaussian_filter(shape, sigma):
    a = np.random.default_rng(0).random(shape)
    expected = np.stack([gaussian_filter(x, sigma) for x in a])
    got = smooth(torch.tensor(a, dtype=torch.float32), sigma).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(96, 96), (20, 14), (7, 10), (5, 2)])
def test_half_size_complex_inverse_is_irfft2(shape):
    """The CPU correlation's inverse transform (a complex FFT of half the width) against a float64 irfft2, with
    the template multiplied in and without, and the same floats for a pattern alone or in a batch."""
    from py4dstem_transformer.detection.correlate import correlate
    from py4dstem_transformer.detection.halfcomplex import fits, inverse_rfft2

    rng = np.random.default_rng(3)
    x = torch.as_tensor(rng.gamma(2.0, 50.0, (4,) + shape), dtype=torch.float32)
    t = rng.random(shape)
    spectrum_t = template_spectrum(t, shape)
    assert fits(torch.fft.rfft2(x), shape)
    exact = torch.fft.irfft2(torch.fft.rfft2(x.double()) * torch.conj(torch.fft.rfft2(torch.as_tensor(t))), s=shape)
    scale = float(exact.abs().max())
    m = torch.fft.rfft2(x)
    for got in (inverse_rfft2(m, shape, spectrum_t), inverse_rfft2(m * spectrum_t, shape), correlate(x, spectrum_t)):
        assert got.shape == x.shape and got.dtype == torch.float32
        assert float((got.double() - exact).abs().max()) <= 2e-6 * scale
    alone = inverse_rfft2(m[2:3], shape, spectrum_t)
    assert torch.equal(alone[0], inverse_rfft2(m, shape, spectrum_t)[2])
    assert not fits(torch.fft.rfft2(torch.zeros(2, 6, 5)), (6, 5))  # odd width: torch's irfft2


@pytest.mark.parametrize("n", [96, 95, 16])
def test_dirichlet_kernel_is_numpys_band_limited_interpolation(n):
    t = torch.tensor([0.0, 0.3, -1.7, 5.0, 12.25, -0.0625, 40.5])
    f = np.fft.ifftshift(np.arange(n)) - np.floor(n / 2)
    expected = [np.real(np.exp(2j * np.pi * f * x / n).sum()) / n for x in t.numpy()]
    np.testing.assert_allclose(dirichlet(t, n).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(minSpacing=0, maxNumPeaks=1000), dict(minSpacing=6, maxNumPeaks=15),
                                dict(minRelativeIntensity=0.3, relativeToPeak=2, minSpacing=4, maxNumPeaks=100),
                                dict(minAbsoluteIntensity=0.5, minSpacing=3, edgeBoundary=7, maxNumPeaks=100)])
def test_maxima_and_filters_are_py4dstems(kw):
    from py4DSTEM.preprocess.utils import get_maxima_2D

    rng = np.random.default_rng(1)
    ar = np.stack([gaussian_filter(rng.random((40, 36)), 1.0) for _ in range(4)])
    ar = (ar / ar.max()).astype(np.float32)
    kw = dict(kw)
    edge = kw.pop("edgeBoundary", 2)
    t = torch.tensor(ar)
    m = local_maxima(t, edge, kw.get("minAbsoluteIntensity", 0))
    m = filter_maxima(m, 4, kw.get("minRelativeIntensity", 0), kw.get("relativeToPeak", 0), kw["minSpacing"],
                      kw["maxNumPeaks"])
    for b in range(4):
        ref = get_maxima_2D(ar[b].astype(np.float64), subpixel="pixel", edgeBoundary=edge, **kw)
        sel = (m.pattern == b).numpy()
        np.testing.assert_array_equal(m.x.numpy()[sel], ref["x"].astype(int))
        np.testing.assert_array_equal(m.y.numpy()[sel], ref["y"].astype(int))
        assert sel.sum() > 0


def test_poly_and_multicorr_refinement_are_py4dstems():
    """Sub-pixel positions against py4DSTEM's get_maxima_2D / upsampled_correlation, peak by peak."""
    from py4DSTEM.preprocess.utils import get_maxima_2D

    rng = np.random.default_rng(2)
    n = 64
    dp = np.zeros((2, n, n))
    dp[:, rng.integers(8, n - 8, 12), rng.integers(8, n - 8, 12)] = rng.random(12) + 0.5
    kernel = np.zeros((n, n))
    kernel[np.hypot(*np.meshgrid(np.fft.fftfreq(n) * n, np.fft.fftfreq(n) * n, indexing="ij")) < 3] = 1
    dp = np.stack([np.real(np.fft.ifft2(np.fft.fft2(d) * np.fft.fft2(kernel))) + 0.05 * rng.random((n, n)) for d in dp])
    cc_ft = np.fft.fft2(dp) * np.conj(np.fft.fft2(kernel))
    cc = np.maximum(np.real(np.fft.ifft2(cc_ft)), 0)
    t_cc = torch.tensor(np.real(np.fft.ifft2(cc_ft)), dtype=torch.float32)
    ar = smooth(t_cc.clamp_min(0), 2)
    m = filter_maxima(local_maxima(ar, 3), 2, 0.05, 0, 4, 20)
    fx, fy, inten = refine_poly(m, ar)
    mx, my = refine_multicorr(fx, fy, m.pattern, t_cc, 16)
    cx, cy = refine_multicorr_fused(fx, fy, m.pattern, t_cc, 16)  # the compiled pass (CPU)
    for b in range(2):
        sel = (m.pattern == b).numpy()
        for mode, (x, y) in (("poly", (fx, fy)), ("multicorr", (mx, my)), ("multicorr", (cx, cy))):
            ref = get_maxima_2D(cc[b], subpixel=mode, sigma=2, edgeBoundary=3, minRelativeIntensity=0.05, minSpacing=4,
                                maxNumPeaks=20, _ar_FT=cc_ft[b])
            assert len(ref) == sel.sum() > 3
            d, _ = cKDTree(np.stack([x.numpy()[sel], y.numpy()[sel]], 1)).query(np.stack([ref["x"], ref["y"]], 1))
            assert d.max() < 1e-3, (mode, d.max())
        np.testing.assert_allclose(np.sort(inten.numpy()[sel]), np.sort(ref["intensity"]), rtol=1e-4)


# --- the finder against py4DSTEM's ------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(TUTORIAL, subpixel="poly"), dict(TUTORIAL, subpixel="multicorr"), dict(),
                                dict(corrPower=0.5, minPeakSpacing=6, edgeBoundary=6, minRelativeIntensity=0.01),
                                dict(TUTORIAL, subpixel="pixel", sigma_dp=1.0, sigma_cc=0)])
def test_finder_gives_py4dstems_peaks_on_noisy_patterns(scan, kw):
    datacube, kernel, _, _ = scan
    reference = _quiet(datacube.find_Bragg_disks, template=kernel, **kw)
    ours = find_bragg_disks(datacube, kernel, progress_bar=False, batch_size=16, **kw)
    n_ref = n_close = count_diff = 0
    for i in range(10):
        for j in range(10):
            a, b = reference.raw[i, j], ours.raw[i, j]
            n_ref, count_diff = n_ref + len(a.qx), count_diff + abs(len(a.qx) - len(b.qx))
            if len(a.qx):
                d, k = cKDTree(np.stack([b.qx, b.qy], 1)).query(np.stack([a.qx, a.qy], 1))
                n_close += int((d < 0.1).sum())
                np.testing.assert_allclose(b.data["intensity"][k], a.data["intensity"], rtol=1e-3, atol=1e-3)
    assert n_ref >= 100 if kw.get("minPeakSpacing", 60) < 60 else n_ref >= 80
    assert n_close >= 0.99 * n_ref
    assert count_diff <= 0.01 * n_ref


def test_maps_from_either_finders_peaks_agree(scan):
    """Same peaks in, same orientations out: the shipped Cu model on py4DSTEM's peaks and on ours agree as
    closely as on py4DSTEM's peaks and the same moved by 1e-3 px at random (the mapper's own sensitivity)."""
    from py4dstem_transformer import TransformerOrientationMap
    from py4dstem_transformer.benchmarks.disks import _jittered
    from py4dstem_transformer.core.symmetry import point_group_rotations
    from py4dstem_transformer.evaluation.compare import misorientation_deg

    datacube, kernel, truth, _ = scan
    kw = dict(TUTORIAL, subpixel="multicorr")
    reference = _quiet(datacube.find_Bragg_disks, template=kernel, **kw)
    ours = find_bragg_disks(datacube, kernel, progress_bar=False, **kw)
    datacube.calibration.set_origin((truth.origin[..., 0], truth.origin[..., 1]))
    datacube.calibration.set_Q_pixel_units("A^-1")
    datacube.calibration.set_Q_pixel_size(0.035 * 128 / 96)
    control = _jittered(reference, datacube, 1e-3, seed=0)
    mapper = TransformerOrientationMap.pretrained("Cu", crystal=make_cu())
    maps = [mapper.match_orientations(bv, progress_bar=False) for bv in (reference, ours, control)]
    crystalline = ~np.isnan(truth.thickness)
    assert crystalline.sum() > 50
    rotations = point_group_rotations(mapper.crystal)
    angle, angle_control = (misorientation_deg(maps[0].matrix[:, :, 0][crystalline], m.matrix[:, :, 0][crystalline], rotations)
                            for m in maps[1:])
    # the peaks agree to ~1e-3 px; on these few-disk noisy patterns the mapper moves by more than 0.1 deg at a
    # quarter of the positions for such differences (the control: 70-85% within 0.1 deg, ~90% within 1 deg)
    for limit in (0.1, 1.0):
        assert (angle <= limit).mean() >= (angle_control <= limit).mean() - 0.1, (limit, np.sort(angle)[-10:])
    assert (angle <= 0.1).mean() >= 0.65 and (angle <= 1.0).mean() >= 0.85, np.sort(angle)[-10:]


# --- streaming and containers ---------------------------------------------------------------------


def test_batch_size_and_chunking_do_not_change_the_peaks(scan):
    datacube, kernel, _, _ = scan
    runs = [find_bragg_disks(datacube, kernel, progress_bar=False, batch_size=b, **TUTORIAL) for b in (1, 7, 30, 1000)]
    for other in runs[1:]:
        for i, j in ((0, 0), (3, 7), (9, 9), (5, 2)):
            np.testing.assert_allclose(other.raw[i, j].data["qx"], runs[0].raw[i, j].data["qx"], atol=1e-9)
            np.testing.assert_allclose(other.raw[i, j].data["intensity"], runs[0].raw[i, j].data["intensity"], rtol=1e-6)


def test_memmap_and_lazily_read_datacubes_stream(scan, tmp_path):
    import py4DSTEM

    datacube, kernel, _, _ = scan
    expected = find_bragg_disks(datacube, kernel, progress_bar=False, **TUTORIAL)
    mm = np.memmap(tmp_path / "dc.raw", dtype=np.float32, mode="w+", shape=datacube.data.shape)
    mm[:] = datacube.data
    mm.flush()
    sources = [py4DSTEM.DataCube(data=np.memmap(tmp_path / "dc.raw", dtype=np.float32, mode="r", shape=mm.shape))]
    import h5py

    with h5py.File(tmp_path / "dc.h5", "w") as f:
        f.create_dataset("data", data=np.asarray(datacube.data), chunks=(1, 1, 96, 96))
    f = h5py.File(tmp_path / "dc.h5", "r")
    sources.append(py4DSTEM.DataCube(data=f["data"]))  # an h5py dataset: read chunk by chunk
    assert not isinstance(sources[-1].data, np.ndarray)
    for dc in sources:
        got = find_bragg_disks(dc, kernel, progress_bar=False, batch_size=12, **TUTORIAL)
        for i, j in ((0, 0), (4, 4), (9, 1)):
            np.testing.assert_allclose(got.raw[i, j].data["qx"], expected.raw[i, j].data["qx"], atol=1e-9)
    f.close()


def test_braggvectors_share_the_datacubes_calibration_and_are_not_calibrated_yet(scan):
    from py4DSTEM import BraggVectors

    datacube, kernel, _, _ = scan
    bv = datacube.find_Bragg_disks_batched(kernel, progress_bar=False, **TUTORIAL)
    assert isinstance(bv, BraggVectors) and bv.Rshape == datacube.Rshape and bv.Qshape == datacube.Qshape
    assert bv.calibration is datacube.calibration
    assert bv.metadata["gen_params"]["subpixel"] == "multicorr"
    assert sum(len(bv.raw[i, j].qx) for i in range(10) for j in range(10)) > 100
    assert hasattr(datacube, "find_Bragg_disks")  # py4DSTEM's own method is still there


def test_positions_masks_and_arrays_give_qpoints(scan):
    from py4DSTEM.data import QPoints

    datacube, kernel, _, _ = scan
    whole = find_bragg_disks(datacube, kernel, progress_bar=False, **TUTORIAL)
    one = datacube.find_Bragg_disks_batched(kernel, data=(3, 4), **TUTORIAL)
    assert isinstance(one, QPoints)
    np.testing.assert_allclose(one.qx, whole.raw[3, 4].qx)
    some = datacube.find_Bragg_disks_batched(kernel, data=(np.array([1, 2]), np.array([5, 6])), **TUTORIAL)
    assert len(some) == 2 and np.allclose(some[1].qy, whole.raw[2, 6].qy)
    mask = np.zeros(datacube.Rshape, bool)
    mask[7, 1] = mask[0, 9] = True
    masked = datacube.find_Bragg_disks_batched(kernel, data=mask, **TUTORIAL)
    assert [len(p.qx) for p in masked] == [len(whole.raw[0, 9].qx), len(whole.raw[7, 1].qx)]
    stack = find_bragg_disks(np.asarray(datacube.data[2, :3]), kernel, **TUTORIAL)
    assert len(stack) == 3 and np.allclose(stack[2].qx, whole.raw[2, 2].qx)


def test_filter_function_runs_per_pattern(scan):
    datacube, kernel, _, _ = scan
    plain = find_bragg_disks(datacube, kernel, progress_bar=False, **TUTORIAL)
    doubled = find_bragg_disks(datacube, kernel, progress_bar=False, filter_function=lambda p: 2 * p,
                               **dict(TUTORIAL, minAbsoluteIntensity=5.0))
    np.testing.assert_allclose(doubled.raw[4, 4].data["intensity"], 2 * plain.raw[4, 4].data["intensity"], rtol=1e-5)


def test_nothing_the_user_gave_is_modified(scan):
    datacube, kernel, _, _ = scan
    data, k = np.array(datacube.data, copy=True), kernel.copy()
    find_bragg_disks(datacube, kernel, progress_bar=False, sigma_dp=1.0, **TUTORIAL)
    np.testing.assert_array_equal(datacube.data, data)
    np.testing.assert_array_equal(kernel, k)


# --- errors ---------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_clear_message(scan):
    datacube, kernel, _, _ = scan
    with pytest.raises(ValueError, match="template has shape"):
        find_bragg_disks(datacube, kernel[:50], progress_bar=False)
    with pytest.raises(ValueError, match="subpixel must be one of"):
        find_bragg_disks(datacube, kernel, subpixel="gauss")
    with pytest.raises(ValueError, match="edgeBoundary must be an integer"):
        find_bragg_disks(datacube, kernel, edgeBoundary=2.5)
    with pytest.raises(ValueError, match="upsample_factor"):
        find_bragg_disks(datacube, kernel, upsample_factor=2)
    with pytest.raises(ValueError, match="corrPower"):
        find_bragg_disks(datacube, kernel, corrPower=1.5)
    with pytest.raises(TypeError, match="DataCube"):
        find_bragg_disks([1, 2, 3], kernel)
    bad = np.array(datacube.data[0, :2], copy=True)
    bad[1, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        find_bragg_disks(bad, kernel)
    with pytest.raises(ValueError, match="origin|polar"):
        find_bragg_disks(datacube, kernel, radial_bksb=True, progress_bar=False)
    with pytest.raises(ValueError, match="boolean mask"):
        datacube.find_Bragg_disks_batched(kernel, data=np.zeros((3, 3), bool))


def test_config_is_frozen_with_py4dstems_defaults():
    import inspect

    from py4DSTEM.braggvectors.diskdetection import find_Bragg_disks

    c = DiskDetectionConfig()
    defaults = inspect.signature(find_Bragg_disks).parameters
    for name, value in c.to_dict().items():
        assert defaults[name].default == value, name
    with pytest.raises(Exception):
        c.sigma_cc = 1.0


def test_render_patterns_puts_the_electrons_where_the_disks_are():
    x, y = np.array([20.0, 40.5]), np.array([30.0, 12.25])
    img = render_patterns(x, y, np.array([1.0, 3.0]), np.array([2, 0]), (64, 64), q_pixel_size=0.05, dose=1e6,
                          diffuse_fraction=0.0, rng=0)
    assert img.shape == (2, 64, 64) and img.dtype == np.float32
    assert abs(img[0].sum() - 1e6) < 5e3
    assert img[0, 38:44, 9:16].sum() > 2.5 * img[0, 17:24, 27:34].sum()  # the brighter disk
    assert img[0, 0:5, 50:].sum() == 0  # nothing far from the disks without a background
    assert abs(img[1].sum() - 1e6) < 5e3  # no disks: all background


def test_detect_batch_on_an_empty_batch():
    out = detect_batch(torch.zeros(0, 32, 32), template_spectrum(np.ones((32, 32)), (32, 32)), DiskDetectionConfig())
    assert len(out.counts) == 0 and len(out.x) == 0


def test_worker_processes_give_the_same_peaks(scan):
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("forked workers are Linux only")
    datacube, kernel, _, _ = scan
    one = find_bragg_disks(datacube, kernel, progress_bar=False, batch_size=16, **TUTORIAL)
    two = find_bragg_disks(datacube, kernel, progress_bar=False, batch_size=16, workers=2, **TUTORIAL)
    for i, j in np.ndindex(10, 10):
        np.testing.assert_array_equal(two.raw[i, j].data, one.raw[i, j].data)


@pytest.mark.parametrize("shape,sigma", [((2, 70, 33), 2.0), ((1, 6, 5), 3.0)])
def test_smooth_with_clip_smooths_the_clipped_images(shape, sigma):
    a = np.random.default_rng(3).normal(size=shape)
    expected = np.stack([gaussian_filter(np.maximum(x, 0), sigma) for x in a])
    t = torch.tensor(a, dtype=torch.float32)
    np.testing.assert_allclose(smooth(t, sigma, clip=True).numpy(), expected, atol=1e-6)
    assert (t.numpy() < 0).any()  # the input is left as it was


@pytest.mark.slow
def test_a_dask_cluster_finds_the_same_peaks_from_memory_and_from_the_file(scan, tmp_path):
    import sys

    import h5py
    import py4DSTEM

    if not sys.platform.startswith("linux"):
        pytest.skip("LocalCluster processes tested on Linux")
    distributed = pytest.importorskip("distributed")
    datacube, kernel, _, _ = scan
    expected = find_bragg_disks(datacube, kernel, progress_bar=False, **TUTORIAL)
    with h5py.File(tmp_path / "dc.h5", "w") as f:
        f.create_dataset("data", data=np.asarray(datacube.data))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client, h5py.File(tmp_path / "dc.h5", "r") as f:
            for source in (datacube, py4DSTEM.DataCube(data=f["data"])):
                got = find_bragg_disks(source, kernel, progress_bar=False, batch_size=12, client=client, **TUTORIAL)
                assert got.calibration is source.calibration
                for i, j in np.ndindex(10, 10):
                    np.testing.assert_array_equal(got.raw[i, j].data, expected.raw[i, j].data)
            with pytest.raises(ValueError, match="radial_bksb"):
                find_bragg_disks(datacube, kernel, radial_bksb=True, client=client)


# --- the compiled pass (CPU) against the torch steps ------------------------------------------------


def _patterns(scan, n=24):
    datacube = scan[0]
    return torch.as_tensor(np.asarray(datacube.data).reshape(-1, *datacube.Qshape)[:n], dtype=torch.float32)


def _assert_same_peaks(a, b, atol_px=1e-3):
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.x, b.x, atol=atol_px)
    np.testing.assert_allclose(a.y, b.y, atol=atol_px)
    np.testing.assert_allclose(a.intensity, b.intensity, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(b.intensity).max(initial=0))))


@pytest.mark.parametrize(
    "kw",
    [
        dict(TUTORIAL, subpixel="poly"),
        dict(TUTORIAL, subpixel="multicorr"),
        dict(),  # py4DSTEM's defaults: multicorr, sigma_cc 2, spacing 60, edge 20, relative cut
        dict(subpixel="pixel", sigma_cc=0, minRelativeIntensity=0, minPeakSpacing=0, maxNumPeaks=None, edgeBoundary=1),
        dict(subpixel="poly", sigma_cc=1.5, relativeToPeak=2, minRelativeIntensity=0.05, minPeakSpacing=5, maxNumPeaks=6),
        dict(subpixel="poly", corrPower=0.5, sigma_dp=1, **{k: v for k, v in TUTORIAL.items() if k != "minAbsoluteIntensity"}),
        dict(subpixel="poly", maxNumPeaks=0),
        dict(subpixel="poly", edgeBoundary=60),  # wider than half the detector: no maxima
    ],
)
def test_compiled_pass_gives_the_torch_steps_peaks(scan, kw):
    from py4dstem_transformer.detection import fused

    if not fused.available:
        pytest.skip("numba is not installed")
    x = _patterns(scan)
    template_ft = template_spectrum(scan[1], x.shape[-2:])
    config = DiskDetectionConfig(**kw)
    reference = detect_batch(x, template_ft, config, fused=False)
    ours = detect_batch(x, template_ft, config, fused=True)
    _assert_same_peaks(ours, reference)
    if kw.get("maxNumPeaks", 1) != 0 and kw.get("edgeBoundary", 0) < 48:
        assert reference.counts.sum() >= len(x)  # the comparison is not between two empty lists


def test_compiled_pass_breaks_ties_as_the_torch_steps_do():
    """Integer images with plateaus, no template and no smoothing: equal values everywhere, so both the
    maxima rule (>= on one side, > on the other) and the brightest-first order meet ties."""
    from py4dstem_transformer.detection import fused

    if not fused.available:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(11)
    x = torch.as_tensor(rng.integers(0, 4, size=(6, 40, 36)).repeat(2, axis=1), dtype=torch.float32)
    for kw in (dict(subpixel="pixel", sigma_cc=0, minPeakSpacing=3, minRelativeIntensity=0, edgeBoundary=2),
               dict(subpixel="pixel", sigma_cc=0, minPeakSpacing=0, relativeToPeak=3, minRelativeIntensity=0.9,
                    maxNumPeaks=None, edgeBoundary=1)):
        config = DiskDetectionConfig(**kw)
        reference = detect_batch(x, None, config, fused=False)
        ours = detect_batch(x, None, config, fused=True)
        assert reference.counts.sum() > 10
        _assert_same_peaks(ours, reference, atol_px=0)


def test_compiled_pass_on_threads_gives_one_threads_peaks_and_restores_torchs_threads(scan):
    x = _patterns(scan, 30)
    template_ft = template_spectrum(scan[1], x.shape[-2:])
    config = DiskDetectionConfig(subpixel="multicorr", **TUTORIAL)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = detect_batch(x, template_ft, config, fused=True)
        torch.set_num_threads(3)
        three = detect_batch(x, template_ft, config, fused=True)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    _assert_same_peaks(three, one, atol_px=0)


@pytest.mark.parametrize("kw", [dict(), dict(corrPower=0.5)])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_compiled_pass_refuses_nan_and_inf(scan, kw, bad):
    x = _patterns(scan, 9).clone()
    x[7, 40, 3] = bad
    template_ft = template_spectrum(scan[1], x.shape[-2:])
    for fused in (True, False):
        with pytest.raises(ValueError, match="NaN or inf"):
            detect_batch(x, template_ft, DiskDetectionConfig(**kw), fused=fused)
    with pytest.raises(ValueError, match="NaN or inf"):
        detect_batch(x, None, DiskDetectionConfig(**kw), fused=True)


def test_kernels_wider_than_the_image_take_the_torch_steps():
    from py4dstem_transformer.detection import fused
    from py4dstem_transformer.detection.correlate import gaussian_kernel

    assert not fused.fits((6, 6), gaussian_kernel(2.0))  # radius 8 > 6
    x = torch.as_tensor(np.random.default_rng(2).random((3, 6, 6)), dtype=torch.float32)
    config = DiskDetectionConfig(subpixel="poly", sigma_cc=2, edgeBoundary=1, minPeakSpacing=0, minRelativeIntensity=0)
    _assert_same_peaks(detect_batch(x, None, config), detect_batch(x, None, config, fused=False), atol_px=0)


def test_compiled_multicorr_gives_the_torch_refinement_in_any_peak_order():
    """The compiled multicorr pass against :func:`refine_multicorr` on rendered patterns, peaks grouped by
    pattern (as the finder gives them) and shuffled; rectangular detectors; odd sizes take the torch path."""
    from py4dstem_transformer.detection import fused_multicorr
    from py4dstem_transformer.detection.correlate import correlate

    if not fused_multicorr.fits((64, 64)):
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(4)
    for shape in ((64, 64), (48, 80)):
        n_pat = 5
        dp = np.zeros((n_pat, *shape), np.float32)
        for b in range(n_pat):
            dp[b, rng.integers(6, shape[0] - 6, 15), rng.integers(6, shape[1] - 6, 15)] = rng.random(15) + 0.5
        kernel = np.zeros(shape)
        r = np.hypot(*np.meshgrid(np.fft.fftfreq(shape[0]) * shape[0], np.fft.fftfreq(shape[1]) * shape[1], indexing="ij"))
        kernel[r < 2.5] = 1
        x = torch.as_tensor(np.real(np.fft.ifft2(np.fft.fft2(dp) * np.fft.fft2(kernel))) + 0.05 * rng.random(dp.shape),
                            dtype=torch.float32)
        cc = correlate(x, template_spectrum(kernel, shape), 1.0)
        ar = smooth(cc.clamp_min(0), 1)
        m = filter_maxima(local_maxima(ar, 3), n_pat, 0.02, 0, 3, 30)
        fx, fy, _ = refine_poly(m, ar)
        assert len(fx) > 40 and bool((m.pattern[1:] >= m.pattern[:-1]).all())
        ref_x, ref_y = refine_multicorr(fx, fy, m.pattern, cc, 16)
        # q = w_x @ cc as one batched product (peaks spread over the patterns) and one product per pattern
        for batched, order in itertools.product((True, False), (torch.arange(len(fx)), torch.as_tensor(rng.permutation(len(fx))))):
            fused_multicorr.batched = batched
            try:
                x_, y_ = refine_multicorr_fused(fx[order], fy[order], m.pattern[order], cc, 16)
            finally:
                fused_multicorr.batched = True
            np.testing.assert_allclose(x_.numpy(), ref_x[order].numpy(), atol=1e-4)
            np.testing.assert_allclose(y_.numpy(), ref_y[order].numpy(), atol=1e-4)
            assert float((x_ - fx[order]).abs().max()) > 1e-3  # it moved the poly positions: a refinement happened
    assert not fused_multicorr.fits((63, 64)) and not fused_multicorr.fits((64, 65))


def test_odd_detectors_take_the_torch_multicorr_inside_the_compiled_pass(scan):
    """An odd detector size: the compiled pass for the maxima, the torch multicorr for the refinement."""
    x = _patterns(scan, 12)[:, :95, :]  # 95 x 96
    kernel = np.asarray(scan[1])[:95, :]
    template_ft = template_spectrum(kernel, x.shape[-2:])
    config = DiskDetectionConfig(subpixel="multicorr", **TUTORIAL)
    reference = detect_batch(x, template_ft, config, fused=False)
    assert reference.counts.sum() >= 24
    _assert_same_peaks(detect_batch(x, template_ft, config, fused=True), reference)
