"""Benchmark: end-to-end mapping speed on a scan, transformer vs ACOM in the same run.

``python -m py4dstem_transformer.benchmarks.speed [--size 256] [--acom-n 500] [--model Cu]``

A Cu polycrystal (:func:`~py4dstem_transformer.simulation.scan.simulate_scan`, 60 Voronoi grains, Bloch-wave,
20-500 A; ``--no-vacuum``: no vacuum grain boundaries) as in-memory ``BraggVectors``; each method is timed from the BraggVectors to the finished
``OrientationMap``. ACOM (default plan) runs on ``--acom-n`` random positions of the same scan and is
extrapolated per pattern; every ACOM figure derived that way is labelled "extrapolated".
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ..evaluation.compare import acom_default
from .common import load_mapper, random_positions, subset_braggvectors, timed


def acom_seconds_per_pattern(crystal, bragg, n: int, seed: int = 0) -> float:
    """ACOM's time per pattern (plan included, amortised) on ``n`` random positions of ``bragg``."""
    pick = random_positions(int(np.prod(bragg.Rshape)), n, seed)
    _, seconds = timed(acom_default, crystal, subset_braggvectors(bragg, pick))
    return seconds / len(pick)


def main(argv=None) -> dict:
    from ..core.crystal import crystal_from_metadata
    from ..simulation.scan import simulate_scan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--acom-n", type=int, default=500)
    parser.add_argument("--model", default="Cu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-vacuum", action="store_true", help="no vacuum grain boundaries: every position diffracts")
    args = parser.parse_args(argv)
    mapper = load_mapper(args.model)
    model = mapper.model
    bragg, truth = simulate_scan([crystal_from_metadata(model.metadata)], scan_shape=(args.size, args.size),
                                 num_grains=60, vacuum_boundaries=not args.no_vacuum, seed=0, progress_bar=False)
    n = args.size**2
    mapper.match_orientations(bragg, progress_bar=False, refine=False)  # warm-up (plan, reflections)
    result = {"positions": n, "threads": torch.get_num_threads()}
    for refine in (False, True):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            mapper.match_orientations(bragg, progress_bar=False, refine=refine)
            times.append(time.perf_counter() - t0)
        result["refined" if refine else "network"] = n / min(times)
    acom = acom_seconds_per_pattern(crystal_from_metadata(model.metadata), bragg, args.acom_n)
    result["ACOM (extrapolated)"] = 1 / acom
    what = "no vacuum" if args.no_vacuum else "vacuum grain boundaries"
    print(f"{args.size}x{args.size} scan ({n} patterns, {what}), torch threads {result['threads']}, BraggVectors in memory "
          f"-> OrientationMap; ACOM timed on {args.acom_n} random positions and extrapolated")
    print("| method | patterns/s | ratio to ACOM | time for this scan |")
    print("|---|---|---|---|")
    for name in ("network", "refined", "ACOM (extrapolated)"):
        label = {"network": "transformer, refine=False", "refined": "transformer, refine=True (default)"}.get(name, name)
        print(f"| {label} | {result[name]:,.0f} | {result[name] * acom:,.0f}x | {n / result[name]:,.1f} s |")
    return result


if __name__ == "__main__":
    main()
