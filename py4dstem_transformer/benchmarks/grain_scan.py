"""Benchmark: a polycrystal scan simulated by py4DSTEM, transformer (with and without its neighbours' second
look) vs ACOM on the same patterns.

``python -m py4dstem_transformer.benchmarks.grain_scan [--model Cu+Cu2O] [--phase Cu2O] [--condition bloch_200kv]
[--size 32] [--grains 12] [--seed 0] [--acom] [--json FILE]``

The robustness benchmark (:mod:`.robustness`) draws every pattern at an independent random orientation, so no
pattern has neighbours. A real scan is a map of grains: this one is a ``size x size`` scan of ``grains``
Voronoi grains (seeded), each at a random orientation (uniform on SO(3)), every position turned from its
grain's orientation by a small random rotation (``--spread`` deg, Gaussian per axis) and simulated at its own
thickness, with py4DSTEM's simulators under one of the robustness conditions (never this project's
simulator), written to a ``BraggVectors`` of raw detector pixels as there. Each scan is mapped with the
model's defaults, with ``neighbours=False`` (every pattern on its own), and with ACOM (``--acom``: every
position, in the same run). Strict = within 5 deg with the 180 deg rotation about the beam not allowed.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import List, Tuple

import numpy as np

from . import robustness as R

__all__ = ["grain_map", "simulate_scan", "pack_scan", "main"]


def grain_map(size: int, grains: int, seed: int = 0, spread_deg: float = 0.2) -> Tuple[np.ndarray, np.ndarray]:
    """``(grain (size, size) int, matrix (size, size, 3, 3))``: Voronoi grains about ``grains`` random seed points,
    each at a random orientation (uniform on SO(3)), every position turned by a random rotation of about
    ``spread_deg`` (deg, Gaussian rotation vector per axis) on the lab side."""
    import torch

    from ..core.rotations import random_rotations

    rng = np.random.default_rng([seed, 3])
    centres = rng.uniform(0, size, (grains, 2))
    x, y = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    grain = np.argmin((x[..., None] - centres[:, 0]) ** 2 + (y[..., None] - centres[:, 1]) ** 2, -1)
    base = random_rotations(grains, seed=seed).numpy()[grain]  # (size, size, 3, 3)
    v = rng.normal(0.0, np.radians(spread_deg), (size, size, 3))  # rotation vectors (rad)
    zero = np.zeros((size, size))
    skew = np.stack([np.stack([zero, -v[..., 2], v[..., 1]], -1), np.stack([v[..., 2], zero, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], zero], -1)], -2)
    turn = torch.linalg.matrix_exp(torch.from_numpy(skew)).numpy()
    return grain, base @ turn


def simulate_scan(crystal, condition: "R.Condition", matrix: np.ndarray, seed: int = 0) -> List[np.ndarray]:
    """Per position (C order) the (k, 3) detected disks ``(qx, qy, I)`` (1/A, direct beam first) of
    ``matrix`` (Rx, Ry, 3, 3), each at a thickness drawn from the condition's range, placed with the condition's
    position noise."""
    flat = matrix.reshape(-1, 3, 3)
    thickness = np.random.default_rng([seed, 4]).uniform(*condition.thickness, len(flat))
    c = R.prepared_crystal(crystal, condition.dynamical, condition.accel_voltage)
    return R.placed([R.detected_disks(R.simulate_pattern(c, m, condition, t), condition) for m, t in zip(flat, thickness)],
                    condition, seed)


def pack_scan(disks: List[np.ndarray], shape: Tuple[int, int], condition: "R.Condition", seed: int = 0):
    """A ``BraggVectors`` of scan ``shape`` from :func:`simulate_scan`'s disks, as :func:`.robustness.pack_braggvectors`."""
    from ..io.peaks import Peaks, peaks_to_braggvectors

    n = len(disks)
    origin = R.believed_origin(condition, n, seed)
    origin = tuple(origin[:, j].reshape(shape) for j in range(2))
    bv = peaks_to_braggvectors(Peaks.from_lists(R.detector_pixels(disks), shape), R.QSHAPE, origin,
                               R.Q_PIXEL_SIZE * (1 + condition.q_pixel_error))
    if condition.ellipticity:
        bv.calibration.set_ellipse((1.0, 1.0 - condition.ellipticity, R.ELLIPSE_THETA))
        bv.setcal(center=True, ellipse=True, pixel=True, rotate=False)
    return bv


def _ours(mapper, bragg, matrix: np.ndarray, phase: int, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t0 = time.perf_counter()
        if mapper.n_phases > 1:
            pm = mapper.match_phases(bragg, progress_bar=False, **kwargs)
            om, wrong = pm.orientation_maps[phase], np.asarray(pm.phase_index).ravel() != phase
        else:
            om, wrong = mapper.match_orientations(bragg, progress_bar=False, **kwargs), None
        seconds = time.perf_counter() - t0
    figures = R._figures(om, matrix, mapper.phases[phase].rotations, seconds, wrong)
    look = getattr(om, "second_look", None)
    figures["second_look"] = None if look is None else {k: v for k, v in look.items() if k != "changed_map"}
    return figures


def main(argv=None) -> dict:
    from ..core.crystal import crystals_from_metadata, private_copy
    from ..evaluation.compare import paired_accuracy
    from .common import load_mapper

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Cu", help="a shipped model's name or a model file")
    parser.add_argument("--phase", default=None, help="a joint model's phase to simulate (name or index)")
    parser.add_argument("--condition", default="bloch_200kv", help="one of the robustness conditions: "
                        + ", ".join(c.name for c in R.CONDITIONS))
    parser.add_argument("--size", type=int, default=32, help="scan positions per side")
    parser.add_argument("--grains", type=int, default=12)
    parser.add_argument("--spread", type=float, default=0.2, help="orientation spread within a grain (deg)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one scan each")
    parser.add_argument("--acom", action="store_true", help="ACOM on every position too")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    condition = {c.name: c for c in R.CONDITIONS}[args.condition]
    mapper = R.told(load_mapper(args.model), condition, {})
    names = mapper.phase_names
    phase = 0 if args.phase is None else (names.index(args.phase) if args.phase in names else int(args.phase))
    crystal = crystals_from_metadata(mapper.model.metadata)[phase]
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.perf_counter()
        _, matrix = grain_map(args.size, args.grains, seed, args.spread)
        disks = simulate_scan(crystal, condition, matrix, seed)
        bragg = pack_scan(disks, (args.size, args.size), condition, seed)
        row = {"seed": seed, "simulate_s": time.perf_counter() - t0,
               "disks_median": float(np.median([len(d) - 1 for d in disks])),
               "alone": _ours(mapper, bragg, matrix, phase, neighbours=False),
               "ours": _ours(mapper, bragg, matrix, phase)}
        row["ours_minus_alone"] = paired_accuracy(row["ours"]["errors_strict"], row["alone"]["errors_strict"])
        if args.acom:
            acom = R.run_acom(private_copy(crystal), bragg, matrix.reshape(-1, 3, 3), mapper.phases[phase].rotations,
                              condition.accel_voltage, condition.precession_deg)
            row["acom"] = acom
            row["ours_minus_acom"] = paired_accuracy(row["ours"]["errors_strict"], acom["errors_strict"])
        rows.append(row)
        print(_line(row, condition), flush=True)
    report = {"model": args.model, "phase": names[phase], "condition": args.condition, "size": args.size,
              "grains": args.grains, "spread_deg": args.spread, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
    return report


def _line(row: dict, condition) -> str:
    def f(r):
        return f"{r['strict_5']:.1%} strict, {r['flip_5']:.1%} flip, median {r['median_strict']:.2f}°, AUC {r['auc']:.2f}"
    text = (f"seed {row['seed']} ({condition.name}, {row['disks_median']:.0f} disks): neighbours {f(row['ours'])} "
            f"({row['ours']['patterns_per_s']:.0f}/s; {row['ours']['second_look']}) | alone {f(row['alone'])} "
            f"({row['alone']['patterns_per_s']:.0f}/s) | ours − alone {R._paired(row['ours_minus_alone'])}")
    if "acom" in row:
        text += f" | ACOM {f(row['acom'])} ({row['acom']['patterns_per_s']:.0f}/s) | ours − ACOM {R._paired(row['ours_minus_acom'])}"
    return text


if __name__ == "__main__":
    main()
