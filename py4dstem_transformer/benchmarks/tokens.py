"""Benchmark: BraggVectors -> tokens on a synthetic scan.

``python -m py4dstem_transformer.benchmarks.tokens [--size 256] [--disks 40] [--repeats 5]``

Stages, each timed separately (median over repeats):

* ``flatten``: in-memory ``BraggVectors`` -> flat peak arrays (:func:`peaks_from_braggvectors`);
* ``tokens``: flat raw peaks (detector pixels) -> calibration -> padded tokens (:func:`scan_tokens`);
* ``read_peaks``: flat peaks straight from a ``py4DSTEM.save`` file, vs ``py4DSTEM.read`` + flatten.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from ..io.detector import DetectorCalibration
from ..io.peaks import Peaks, peaks_from_braggvectors, peaks_to_braggvectors, read_peaks
from ..model.tokens import TokenConfig, scan_tokens


def synthetic_peaks(size: int, disks: int, seed: int = 0) -> Peaks:
    """``size`` x ``size`` positions, ``disks`` raw peaks each (direct beam + Bragg disks in k_max)."""
    rng = np.random.default_rng(seed)
    B, q_pixel_size = size * size, 0.0125
    origin = (rng.uniform(126, 130, (size, size)), rng.uniform(126, 130, (size, size)))
    n = B * disks
    radius = rng.uniform(0.3, 2.0, n) / q_pixel_size  # pixels
    angle = rng.uniform(-np.pi, np.pi, n)
    qx = np.repeat(origin[0].ravel(), disks) + radius * np.cos(angle)
    qy = np.repeat(origin[1].ravel(), disks) + radius * np.sin(angle)
    intensity = rng.exponential(1.0, n)
    first = np.arange(B) * disks  # the direct beam, at the origin, brightest
    qx[first], qy[first], intensity[first] = origin[0].ravel(), origin[1].ravel(), 100.0
    cal = DetectorCalibration(origin, q_pixel_size)
    return Peaks(qx, qy, intensity, np.full(B, disks, dtype=np.int64), (size, size), cal)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(size: int = 256, disks: int = 40, repeats: int = 5, file_io: bool = True) -> dict:
    peaks = synthetic_peaks(size, disks)
    B = peaks.num_positions
    config = TokenConfig()
    scan_tokens(peaks, config)  # warm-up
    result = {"positions": B, "disks_per_position": disks, "threads": torch.get_num_threads()}
    result["tokens_s"] = _median_time(lambda: scan_tokens(peaks, config), repeats)
    bv = peaks_to_braggvectors(peaks)
    result["flatten_s"] = _median_time(lambda: peaks_from_braggvectors(bv), repeats)
    if file_io:
        import py4DSTEM

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bv.h5")
            py4DSTEM.save(path, bv, mode="o")
            result["read_peaks_s"] = _median_time(lambda: read_peaks(path), max(1, repeats // 2))
            result["py4dstem_read_s"] = _median_time(lambda: peaks_from_braggvectors(py4DSTEM.read(path)), 1)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="scan is size x size positions")
    parser.add_argument("--disks", type=int, default=40, help="peaks per position (direct beam included)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-file", action="store_true", help="skip the file-reading comparison")
    args = parser.parse_args(argv)
    r = run(args.size, args.disks, args.repeats, not args.no_file)
    B = r["positions"]
    print(f"scan {args.size}x{args.size} = {B} positions, {args.disks} peaks each, torch threads {r['threads']}")
    print(f"{'stage':<44} {'seconds':>8} {'patterns/s':>12}")
    rows = [("flat raw peaks -> calibrated tokens", r["tokens_s"]), ("BraggVectors (memory) -> flat peaks", r["flatten_s"])]
    if "read_peaks_s" in r:
        rows += [("file -> flat peaks (read_peaks, h5py)", r["read_peaks_s"]),
                 ("file -> py4DSTEM.read -> flat peaks", r["py4dstem_read_s"])]
    for name, seconds in rows:
        print(f"{name:<44} {seconds:>8.3f} {B / seconds:>12,.0f}")
    return r


if __name__ == "__main__":
    main()
