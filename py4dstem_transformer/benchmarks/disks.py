"""Benchmark: batched disk detection against py4DSTEM's ``find_Bragg_disks``, and DataCube -> OrientationMap.

``python -m py4dstem_transformer.benchmarks.disks [--scan 24] [--sizes 128,256] [--end-to-end-scan 256] [--json FILE]``

The data: :func:`~py4dstem_transformer.simulation.images.simulate_datacube`, a Cu polycrystal
(Bloch-wave disks, grains 20-500 A thick, a hole in the film, a drifting direct beam) rendered as
noisy detector images (probe-convolved disks, a diffuse background, Poisson counts at 1e6 electrons
per pattern, ``--dose``), ``--scan`` x ``--scan`` positions, at each detector size in ``--sizes`` (the detector
always reaches 2.24 1/A; the probe radius is 3 px at 128 x 128). The kernel comes from the scan's
vacuum as in tutorial 04 (``get_vacuum_probe``, ``get_kernel(mode="sigmoid")``).

For each detector and each setting, py4DSTEM 0.14.18 (``datacube.find_Bragg_disks``, CPU) and
:func:`~py4dstem_transformer.find_bragg_disks` run on the same whole scan, in the same run:

- ``default``: py4DSTEM's defaults (``subpixel="multicorr"``, ``minPeakSpacing=60``, ...);
- ``default-poly``: the same with ``subpixel="poly"``;
- ``tutorial``, ``tutorial-multicorr``: tutorial 04's settings (``sigma_cc=1``, no relative cut,
  spacing 8 px and edge 4 px at 128, scaled with the detector, an absolute cut of
  2.5 (128 / Qx)**2 sqrt(dose / 1e6)).

Printed: patterns/s of each (ours: the better of two runs) and the ratio; ours once more with the
torch steps instead of the compiled pass (``detect.use_fused = False``: the path on a GPU); how many of py4DSTEM's peaks we find within 0.1 px and
within 0.01 px; the difference in peak counts. For the tutorial settings the scan is also mapped
from either set of peaks with the shipped Cu model (calibration from the simulation: the true origin
of every position and pixel size), and the maps compared position by position (symmetry-reduced
misorientation; "control": the same for py4DSTEM's peaks against themselves moved by 1e-3 px at
random, i.e. the mapper's own sensitivity), and with the truth. Last, the time from DataCube to OrientationMap with our finder
and mapper (tutorial settings, poly), per pattern and projected to a 256 x 256 scan; with
``--end-to-end-scan N``, measured on an N x N scan of its own streamed from a memory-mapped file
(:func:`end_to_end`); and the time of each step of the finder per pattern (:func:`stage_times`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import time
from typing import Optional

import numpy as np

__all__ = ["SETTINGS", "settings_for", "make_scan", "compare_peaks", "run_size", "end_to_end", "main"]

#: name -> keywords (tutorial ones at 128 x 128; :func:`settings_for` scales them with the detector).
SETTINGS = {
    "default": {},
    "default-poly": {"subpixel": "poly"},
    "tutorial": dict(sigma_cc=1, subpixel="poly", minRelativeIntensity=0, minPeakSpacing=8, edgeBoundary=4,
                     maxNumPeaks=80, minAbsoluteIntensity=2.5),
    "tutorial-multicorr": dict(sigma_cc=1, subpixel="multicorr", minRelativeIntensity=0, minPeakSpacing=8,
                                edgeBoundary=4, maxNumPeaks=80, minAbsoluteIntensity=2.5),
}


def settings_for(name: str, q: int, dose: float = 1e6) -> dict:
    """The keywords of setting ``name`` for a ``q`` x ``q`` detector and ``dose`` electrons per pattern.

    Lengths scale with q; the absolute cut with 1 / q**2 (the kernel spreads over q**2 as many pixels)
    and with sqrt(dose / 1e6), so that it stays as far above the Poisson noise as tutorial 04's.
    """
    kw = dict(SETTINGS[name])
    if name.startswith("tutorial"):
        s = q / 128
        cut = 2.5 / s**2 * np.sqrt(dose / 1e6)
        kw.update(minPeakSpacing=8 * s, edgeBoundary=int(round(4 * s)), minAbsoluteIntensity=float(cut))
    return kw


def make_scan(scan: int, q: int, seed: int = 3, dose: float = 1e6):
    """(datacube, kernel, truth) for a ``scan`` x ``scan`` Cu polycrystal on a ``q`` x ``q`` detector."""
    from ..simulation.images import simulate_datacube
    from ..simulation.simulate import example_crystal

    datacube, truth, _ = simulate_datacube([example_crystal("Cu")], (scan, scan), (q, q), seed=seed, dose=dose)
    return datacube, _vacuum_kernel(datacube, truth), truth


def _vacuum_kernel(datacube, truth):
    """Tutorial 04's probe kernel from the scan's hole (``get_vacuum_probe``, ``get_kernel(mode="sigmoid")``)."""
    probe = _quiet(datacube.get_vacuum_probe, ROI=np.isnan(truth.thickness))
    alpha, px0, py0 = _quiet(probe.measure_disk, plot=False)
    return _quiet(probe.get_kernel, mode="sigmoid", origin=(px0, py0), radii=(alpha, 3 * alpha))


def compare_peaks(reference, ours) -> dict:
    """How many of ``reference``'s peaks (BraggVectors) ``ours`` has within 0.1 and 0.01 px; count differences."""
    from scipy.spatial import cKDTree

    rx, ry = reference.Rshape
    n_ref = n_ours = n_01 = n_001 = count_diff = 0
    worst = 0.0
    for i in range(rx):
        for j in range(ry):
            a, b = reference.raw[i, j], ours.raw[i, j]
            n_ref, n_ours, count_diff = n_ref + len(a.qx), n_ours + len(b.qx), count_diff + abs(len(a.qx) - len(b.qx))
            if len(a.qx) and len(b.qx):
                d, _ = cKDTree(np.stack([b.qx, b.qy], 1)).query(np.stack([a.qx, a.qy], 1))
                n_01, n_001, worst = n_01 + int((d < 0.1).sum()), n_001 + int((d < 0.01).sum()), max(worst, float(d.max()))
    return {"peaks_reference": n_ref, "peaks_ours": n_ours, "within_0.1px": n_01 / max(1, n_ref),
            "within_0.01px": n_001 / max(1, n_ref), "count_difference": count_diff / max(1, n_ref), "worst_px": worst}


def _calibrate(datacube, truth, q):
    cal = datacube.calibration
    cal.set_origin((truth.origin[..., 0], truth.origin[..., 1]))
    cal.set_Q_pixel_units("A^-1")
    cal.set_Q_pixel_size(0.035 * 128 / q)


def _jittered(bragg, datacube, sigma_px: float, seed: int = 0):
    """A copy of ``bragg`` (attached to ``datacube``, so calibrated alike) with every peak moved by N(0, sigma_px)."""
    from py4DSTEM import BraggVectors

    rng = np.random.default_rng(seed)
    out = BraggVectors(bragg.Rshape, bragg.Qshape, name="jittered")
    for i, j in np.ndindex(*bragg.Rshape):
        d = bragg.raw[i, j].data.copy()
        d["qx"] += rng.normal(0, sigma_px, len(d))
        d["qy"] += rng.normal(0, sigma_px, len(d))
        out._v_uncal[i, j].data = d
    datacube.attach(out)
    return out


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


@contextlib.contextmanager
def _torch_steps():
    from ..detection import detect

    previous, detect.use_fused = detect.use_fused, False
    try:
        yield
    finally:
        detect.use_fused = previous


def run_size(q: int, scan: int, settings, mapper=None, seed: int = 3, dose: float = 1e6) -> dict:
    """All the measurements for one detector size (see the module docstring)."""
    from ..core.symmetry import point_group_rotations
    from ..detection.finder import find_bragg_disks
    from ..evaluation.compare import evaluate_orientation_map, misorientation_deg

    datacube, kernel, truth = make_scan(scan, q, seed, dose)
    n = scan * scan
    out = {"detector": q, "patterns": n, "dose": dose, "settings": {}}
    find_bragg_disks(datacube.data[0, :4], kernel, progress_bar=False)  # warm-up (threads, allocator)
    crystalline = ~np.isnan(truth.thickness)
    for name in settings:
        kw = settings_for(name, q, dose)
        gc.collect()
        t0 = time.perf_counter()
        reference = _quiet(datacube.find_Bragg_disks, template=kernel, name="reference", **kw)
        t_ref = time.perf_counter() - t0
        t_ours = float("inf")
        for _ in range(2):  # the better of two runs (the first after py4DSTEM's pays for its garbage)
            gc.collect()
            t0 = time.perf_counter()
            ours = find_bragg_disks(datacube, kernel, progress_bar=False, name="ours", **kw)
            t_ours = min(t_ours, time.perf_counter() - t0)
        row = {"keywords": kw, "py4dstem_per_s": n / t_ref, "ours_per_s": n / t_ours, "ratio": t_ref / t_ours}
        with _torch_steps():  # ours again, without the compiled pass (what a GPU runs; the CPU path before it)
            gc.collect()
            t0 = time.perf_counter()
            find_bragg_disks(datacube, kernel, progress_bar=False, name="ours_torch", **kw)
            row["ours_torch_steps_per_s"] = n / (time.perf_counter() - t0)
        row.update(compare_peaks(reference, ours))
        row["peaks_per_pattern"] = row["peaks_reference"] / n
        if mapper is not None and name.startswith("tutorial"):
            _calibrate(datacube, truth, q)
            maps = [mapper.match_orientations(bv, progress_bar=False) for bv in (reference, ours)]
            symmetry = point_group_rotations(mapper.crystal)
            between = misorientation_deg(maps[0].matrix[:, :, 0][crystalline], maps[1].matrix[:, :, 0][crystalline], symmetry)
            row["maps_within_0.1deg"] = float((between <= 0.1).mean())
            row["maps_within_1deg"] = float((between <= 1).mean())
            # control: py4DSTEM's peaks moved by 1e-3 px at random, mapped again: how much of the maps'
            # disagreement is the mapper's own sensitivity to changes far below the finders' differences
            control = mapper.match_orientations(_jittered(reference, datacube, 1e-3), progress_bar=False)
            moved = misorientation_deg(maps[0].matrix[:, :, 0][crystalline], control.matrix[:, :, 0][crystalline], symmetry)
            row["control_within_0.1deg"] = float((moved <= 0.1).mean())
            for label, om in zip(("map_reference", "map_ours"), maps):
                r = evaluate_orientation_map(om, truth.orientation_matrices, symmetry, crystalline)
                row[label + "_strict_5deg"] = r["strict"]["within_5"]
        out["settings"][name] = row
    if mapper is not None and "tutorial" in settings:
        kw = settings_for("tutorial", q, dose)
        t0 = time.perf_counter()
        bv = find_bragg_disks(datacube, kernel, progress_bar=False, **kw)
        t_find = time.perf_counter() - t0
        _calibrate(datacube, truth, q)
        t0 = time.perf_counter()
        mapper.match_orientations(bv, progress_bar=False)
        t_map = time.perf_counter() - t0
        per = (t_find + t_map) / n
        out["end_to_end"] = {"find_s": t_find, "map_s": t_map, "per_pattern_ms": per * 1e3,
                             "projected_256x256_scan_s": per * 256 * 256}
    out["stages_ms"] = {name: stage_times(datacube, kernel, settings_for(name, q, dose)) for name in settings}
    return out


def end_to_end(q: int, scan: int, mapper, seed: int = 5, dose: float = 1e6, directory: Optional[str] = None) -> dict:
    """DataCube -> OrientationMap, timed, on a ``scan`` x ``scan`` scan of its own on a ``q`` x ``q`` detector.

    The scan (a Cu polycrystal as :func:`make_scan`'s, a grain per 256 positions) is rendered into a
    ``.npy`` memory map in a temporary folder under ``directory`` (4 q**2 bytes per position: 17 GB for
    256 x 256 positions at 256 x 256), so a scan larger than memory streams from the disk as a user's
    would. Timed: our finder (tutorial settings, poly) on the whole scan, then the shipped mapper on its
    peaks (calibration from the simulation). Also the strict accuracy of the map against the truth.
    """
    import os
    import tempfile

    from ..core.symmetry import point_group_rotations
    from ..detection.finder import find_bragg_disks
    from ..evaluation.compare import evaluate_orientation_map
    from ..simulation.images import simulate_datacube
    from ..simulation.simulate import example_crystal

    n = scan * scan
    with tempfile.TemporaryDirectory(dir=directory) as folder:
        images = np.lib.format.open_memmap(os.path.join(folder, "scan.npy"), mode="w+", dtype=np.float32,
                                           shape=(scan, scan, q, q))
        t0 = time.perf_counter()
        datacube, truth, _ = simulate_datacube([example_crystal("Cu")], (scan, scan), (q, q), num_grains=max(6, n // 256),
                                               seed=seed, dose=dose, out=images)
        images.flush()
        t_render = time.perf_counter() - t0
        kernel = _vacuum_kernel(datacube, truth)
        kw = settings_for("tutorial", q, dose)
        find_bragg_disks(datacube.data[0, :4], kernel, progress_bar=False, **kw)  # warm-up
        gc.collect()
        t0 = time.perf_counter()
        bv = find_bragg_disks(datacube, kernel, progress_bar=False, **kw)
        t_find = time.perf_counter() - t0
        _calibrate(datacube, truth, q)
        gc.collect()
        t0 = time.perf_counter()
        om = mapper.match_orientations(bv, progress_bar=False)
        t_map = time.perf_counter() - t0
        crystalline = ~np.isnan(truth.thickness)
        strict = evaluate_orientation_map(om, truth.orientation_matrices, point_group_rotations(mapper.crystal),
                                          crystalline)["strict"]["within_5"]
        del datacube, images
        gc.collect()
    return {"detector": q, "scan": scan, "patterns": n, "file_gb": 4 * q * q * n / 1e9, "render_s": t_render,
            "find_s": t_find, "map_s": t_map, "find_per_s": n / t_find, "map_per_s": n / t_map,
            "total_s": t_find + t_map, "strict_5deg": strict}


def stage_times(datacube, kernel, keywords: dict, batch: int = 16, repeats: int = 5) -> dict:
    """Milliseconds per pattern of each step of :func:`~py4dstem_transformer.detection.detect.detect_batch`
    on the first ``batch`` patterns (the best of ``repeats``)."""
    import torch

    from ..detection.config import DiskDetectionConfig
    from ..detection import fused, fused_multicorr, halfcomplex
    from ..detection.correlate import gaussian_kernel, smooth, template_spectrum
    from ..detection.maxima import filter_maxima, local_maxima
    from ..detection.subpixel import refine_multicorr, refine_poly

    config = DiskDetectionConfig(**keywords)
    q = datacube.Qshape
    x = torch.as_tensor(np.asarray(datacube.data).reshape(-1, *q)[:batch], dtype=torch.float32)
    template_ft = template_spectrum(kernel, q)
    best: dict = {}
    for _ in range(repeats):
        t, times = time.perf_counter(), {}

        def tick(name):
            nonlocal t
            now = time.perf_counter()
            times[name] = now - t
            t = now

        spectrum = torch.fft.rfft2(x) * template_ft
        tick("rfft2 and product")
        cc = torch.fft.irfft2(spectrum, s=tuple(q))
        tick("irfft2")
        if halfcomplex.fits(spectrum, tuple(q)):  # what the CPU path runs instead of the three above
            halfcomplex.inverse_rfft2(torch.fft.rfft2(x), tuple(q), template_ft)
            tick("rfft2, product and half-width complex inverse (CPU path)")
        ar = smooth(cc, config.sigma_cc, clip=True)
        tick("clip and smooth")
        m = local_maxima(ar, config.edgeBoundary, config.minAbsoluteIntensity)
        tick("local maxima")
        m = filter_maxima(m, batch, config.minRelativeIntensity, config.relativeToPeak, config.minPeakSpacing,
                          config.maxNumPeaks)
        tick("filters")
        fx, fy, _ = refine_poly(m, ar)
        tick("poly")
        if config.subpixel == "multicorr":
            refine_multicorr(fx, fy, m.pattern, cc, config.upsample_factor)
            tick("multicorr")
        if fused.available:  # what the CPU path runs instead of clip ... poly: one compiled pass, one thread
            counts, px, py, _ = fused.peaks_fused(
                cc.numpy(), gaussian_kernel(config.sigma_cc) if config.sigma_cc > 0 else np.ones(1), config)
            tick("fused pass (clip ... poly, 1 thread)")
            if config.subpixel == "multicorr" and fused_multicorr.fits(tuple(q)):  # and instead of multicorr
                pattern = torch.repeat_interleave(torch.arange(batch), torch.from_numpy(counts))
                fused_multicorr.refine_multicorr_fused(torch.from_numpy(px), torch.from_numpy(py), pattern, cc,
                                                       config.upsample_factor)
                tick("fused multicorr (1 thread)")
        for k, v in times.items():
            best[k] = min(best.get(k, float("inf")), v * 1e3 / batch)
    return best


def _print(result: dict) -> None:
    q, n = result["detector"], result["patterns"]
    print(f"\n{q} x {q} detector, {n} patterns, {result['dose']:.0e} electrons each (same scan for both)")
    print(f"{'setting':22s} {'peaks/DP':>8s} {'py4DSTEM DP/s':>13s} {'ours DP/s':>10s} {'ratio':>7s} {'torch steps':>11s} "
          f"{'<0.1 px':>8s} {'<0.01 px':>8s} {'count diff':>10s} {'maps <0.1/1 deg':>15s} {'control':>7s} {'strict ref/ours':>15s}")
    for name, r in result["settings"].items():
        maps = f"{r['maps_within_0.1deg']:.1%}/{r['maps_within_1deg']:.1%}" if "maps_within_0.1deg" in r else "-"
        control = f"{r['control_within_0.1deg']:.1%}" if "control_within_0.1deg" in r else "-"
        strict = (f"{r['map_reference_strict_5deg']:.1%}/{r['map_ours_strict_5deg']:.1%}"
                  if "map_ours_strict_5deg" in r else "-")
        print(f"{name:22s} {r['peaks_per_pattern']:8.1f} {r['py4dstem_per_s']:13.0f} {r['ours_per_s']:10.0f} "
              f"{r['ratio']:6.1f}x {r.get('ours_torch_steps_per_s', float('nan')):11.0f} {r['within_0.1px']:8.2%} {r['within_0.01px']:8.2%} {r['count_difference']:10.2%} "
              f"{maps:>15s} {control:>7s} {strict:>15s}")
    if "end_to_end" in result:
        e = result["end_to_end"]
        print(f"DataCube -> OrientationMap (ours, tutorial settings): find {e['find_s']:.2f} s + map {e['map_s']:.2f} s "
              f"= {e['per_pattern_ms']:.3f} ms per pattern; a 256 x 256 scan: {e['projected_256x256_scan_s'] / 60:.1f} min (projected)")
    if "end_to_end_scan" in result:
        e = result["end_to_end_scan"]
        print(f"DataCube -> OrientationMap, a {e['scan']} x {e['scan']} scan ({e['patterns']} patterns, {e['file_gb']:.1f} GB "
              f"memory-mapped .npy; rendered in {e['render_s']:.0f} s): find {e['find_s']:.1f} s ({e['find_per_s']:.0f}/s) + "
              f"map {e['map_s']:.1f} s ({e['map_per_s']:.0f}/s) = {e['total_s']:.1f} s; strict <= 5 deg {e['strict_5deg']:.1%}")
    for name, stages in result.get("stages_ms", {}).items():
        torch_steps = {k: v for k, v in stages.items() if not k.startswith("fused") and "CPU path" not in k}  # those replace some
        print(f"steps, ms per pattern ({name}, batches of 16, torch's threads): "
              + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()) + f"; sum of the torch steps {sum(torch_steps.values()):.3f}")


def main(argv=None) -> dict:
    from ..core.device import environment_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=int, default=24, help="scan positions per side")
    parser.add_argument("--sizes", default="128,256", help="detector sizes, comma separated")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma separated, of: " + ", ".join(SETTINGS))
    parser.add_argument("--no-maps", action="store_true", help="skip the orientation maps and the end-to-end time")
    parser.add_argument("--dose", type=float, default=1e6, help="electrons per pattern")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--end-to-end-scan", type=int, default=0,
                        help="also time DataCube -> OrientationMap on a scan of this many positions per side, rendered "
                             "into a memory-mapped file (0: skip; 256 at 256 x 256 writes 17 GB)")
    parser.add_argument("--workdir", default=None, help="where the end-to-end scan's file goes (default: the system's temp)")
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    mapper = None
    if not args.no_maps:
        from ..mapping.mapper import TransformerOrientationMap

        mapper = TransformerOrientationMap.pretrained("Cu")
    results = {"environment": environment_info(), "scan": args.scan, "dose": args.dose, "sizes": []}
    for q in (int(s) for s in args.sizes.split(",")):
        r = run_size(q, args.scan, settings, mapper, args.seed, args.dose)
        if args.end_to_end_scan > 0 and mapper is not None:
            r["end_to_end_scan"] = end_to_end(q, args.end_to_end_scan, mapper, args.seed + 2, args.dose, args.workdir)
        _print(r)
        results["sizes"].append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()
