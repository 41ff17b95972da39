"""Benchmark: accuracy and speed on random orientations, transformer (network only / refined) vs ACOM.

``python -m py4dstem_transformer.benchmarks.accuracy [--model Cu] [--n 1000] [--acom-n 1000] [--json FILE]``

Test patterns: orientations uniform on SO(3), Bloch-wave, thickness uniform in 20-500 A, 300 kV,
given as raw detector pixels + calibration with the direct beam present
(:func:`~py4dstem_transformer.simulation.scan.simulate_orientations`), clean and damaged (0.01 1/A jitter, 20%
intensity noise, weakest 20% of disks dropped, one spurious disk). Errors are symmetry-reduced
misorientations, strict and with the beam flip allowed; ``corr AUC`` is the ROC AUC of the
confidence for right (< 5 deg strict) vs wrong. ACOM is py4DSTEM's ``match_orientations`` with its
default plan (2 deg / 2 deg, k_max 2.0), timed in the same run on the first ``--acom-n`` patterns.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ..evaluation.compare import acom_default, evaluate_orientation_map, summarize_errors
from ..simulation.scan import simulate_random_orientations


def test_set(crystal, n: int, seed: int, damaged: bool):
    return simulate_random_orientations(crystal, n, seed, damaged)


def run_transformer(mapper, bragg, truth, refine: bool, precision=None) -> dict:
    mapper.precision = precision
    t0 = time.perf_counter()
    # independent random orientations in a (1, n) row: no neighbours to take a second look with
    om = mapper.match_orientations(bragg, refine=refine, progress_bar=False, neighbours=False)
    seconds = time.perf_counter() - t0
    result = evaluate_orientation_map(om, truth.orientation_matrices, mapper.symmetry)
    result.update(seconds=seconds, patterns_per_s=om.corr.size / seconds)
    return result


def run_acom(crystal, bragg, truth, symmetry) -> dict:
    t0 = time.perf_counter()
    om = acom_default(crystal, bragg)
    seconds = time.perf_counter() - t0
    result = evaluate_orientation_map(om, truth.orientation_matrices, symmetry)
    result.update(seconds=seconds, patterns_per_s=om.corr.size / seconds)
    return result


def by_disk_count(errors: np.ndarray, counts: np.ndarray, bins=((0, 6), (7, 12), (13, 24), (25, 10**6))) -> dict:
    return {f"{lo}-{hi if hi < 10**6 else ''}": summarize_errors(errors[(counts >= lo) & (counts <= hi)]) for lo, hi in bins}


def main(argv=None) -> dict:
    from ..core.crystal import crystal_from_metadata
    from ..model.tokens import braggvectors_to_tokens
    from .common import load_mapper

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Cu", help="a pretrained name or a model file")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--acom-n", type=int, default=1000, help="ACOM on this many of the patterns (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    mapper = load_mapper(args.model)
    model = mapper.model
    report = {"threads": torch.get_num_threads(), "n": args.n}
    for damaged in (False, True):
        name = "damaged" if damaged else "clean"
        bragg, truth = test_set(crystal_from_metadata(model.metadata), args.n, args.seed + 100 * damaged, damaged)
        counts = braggvectors_to_tokens(bragg, mapper.token_config).counts.numpy()
        rows = {"network fp32": run_transformer(mapper, bragg, truth, False, "fp32"),
                "network": run_transformer(mapper, bragg, truth, False),
                "refined": run_transformer(mapper, bragg, truth, True)}
        if args.acom_n:
            sub, sub_truth = (bragg, truth) if args.acom_n >= args.n else test_set(
                crystal_from_metadata(model.metadata), args.acom_n, args.seed + 100 * damaged, damaged)
            rows["ACOM default"] = run_acom(crystal_from_metadata(model.metadata), sub, sub_truth, mapper.symmetry)
        rows["refined"]["by_disks"] = by_disk_count(rows["refined"]["errors_strict"], counts)
        _print(name, rows, counts)
        report[name] = {k: {kk: vv for kk, vv in v.items() if kk not in ("errors_strict", "errors_flip", "corr")} for k, v in rows.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
    return report


def _print(name: str, rows: dict, counts: np.ndarray) -> None:
    print(f"\n### {name} ({len(counts)} patterns, disks per pattern median {np.median(counts):.0f})\n")
    print("| method | patterns/s | median strict | median flip | p90 strict | ≤2° strict | ≤5° strict | ≤5° flip | corr AUC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, r in rows.items():
        s, f = r["strict"], r["flip"]
        print(f"| {method} | {r['patterns_per_s']:,.0f} | {s['median']:.2f}° | {f['median']:.2f}° | {s['p90']:.2f}° | "
              f"{s['within_2']:.1%} | {s['within_5']:.1%} | {f['within_5']:.1%} | {r['corr_auc']:.3f} |")
    print("\nrefined, strict, by disks per pattern:")
    for bin_, s in rows["refined"]["by_disks"].items():
        if s["n"]:
            print(f"  {bin_:>6} disks: n={s['n']:4d} median {s['median']:.2f}°  ≤5° {s['within_5']:.1%}")


if __name__ == "__main__":
    main()
