"""Benchmark: joint phase + orientation mapping (Cu / Cu2O) vs ACOM with two plans and CrystalPhase.

``python -m py4dstem_transformer.benchmarks.phases [--model Cu+Cu2O] [--size 128] [--grains 60]
[--thickness 21.71 | --thickness 20,500] [--acom-n 500] [--json FILE]``

The scan is the paper's (method.md section 6): N x N positions, Voronoi grains (one-pixel vacuum
boundaries), each grain Cu or Cu2O at random, uniformly random orientations, Bloch-wave patterns,
300 kV, raw detector pixels + calibration (:func:`~py4dstem_transformer.simulation.scan.simulate_scan`); its
orientations are drawn fresh, never used in training. Compared, on the same BraggVectors:

* the joint model: ``match_phases`` on every position (phase = largest corr);
* the single-phase Cu model on the Cu grains (the orientation accuracy to match);
* ACOM: py4DSTEM's default plan for each crystal, ``match_orientations`` with both, the larger corr
  picks the phase (what the paper did), on ``acom_n`` random crystalline positions, time
  **extrapolated** per pattern to the scan;
* ``CrystalPhase.quantify_phase`` on the same positions, started from the ACOM orientations (its
  argmax phase weight picks the phase).

Errors are symmetry-reduced misorientations against the truth (m-3m for both phases), on positions
whose phase was found correctly; phase accuracy is over crystalline positions.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ..evaluation.compare import _quiet, acom_match, acom_plan, misorientation_deg, roc_auc, summarize_errors
from .common import random_positions, subset_braggvectors


def make_scan(size: int, grains: int, thickness, seed: int):
    from ..simulation.scan import simulate_scan
    from ..simulation.simulate import example_crystal

    return simulate_scan([example_crystal("Cu"), example_crystal("Cu2O")], (size, size), num_grains=grains,
                         thickness=thickness, seed=seed, progress_bar=False)


def evaluate_phases(phase_index: np.ndarray, matrix: np.ndarray, truth_phase: np.ndarray, truth_matrix: np.ndarray,
                    symmetry, corr=None) -> dict:
    """Phase accuracy over crystalline positions, and orientation errors where the phase is right.

    ``phase_index`` (n,), ``matrix`` (n, 3, 3), ``truth_*`` the same positions' truth.
    """
    crystalline = truth_phase >= 0
    right_phase = (phase_index == truth_phase) & crystalline
    strict = misorientation_deg(matrix[right_phase], truth_matrix[right_phase], symmetry)
    flip = misorientation_deg(matrix[right_phase], truth_matrix[right_phase], symmetry, allow_beam_flip=True)
    out = {"n_crystalline": int(crystalline.sum()), "phase_accuracy": float(right_phase.sum() / max(crystalline.sum(), 1)),
           "vacuum_called_crystal": float((phase_index[~crystalline] >= 0).mean()) if (~crystalline).any() else float("nan"),
           "strict": summarize_errors(strict), "flip": summarize_errors(flip)}
    for p in (0, 1):
        sel = truth_phase[right_phase] == p
        out[f"phase{p}_strict"] = summarize_errors(strict[sel])
    if corr is not None:  # right = phase right and strict error < 5 deg
        good = np.zeros(len(phase_index), bool)
        good[np.flatnonzero(right_phase)[strict < 5]] = True
        out["corr_auc"] = roc_auc(corr[crystalline], good[crystalline])
    return out


def run_joint(model: str, bragg, truth) -> dict:
    from .common import load_mapper

    mapper = load_mapper(model)
    t0 = time.perf_counter()
    pm = mapper.match_phases(bragg, progress_bar=False)
    seconds = time.perf_counter() - t0
    symmetry = mapper.symmetry
    result = evaluate_phases(pm.phase_index.ravel(), pm.matrix().reshape(-1, 3, 3), truth.phase.ravel(),
                             truth.orientation_matrices.reshape(-1, 3, 3), symmetry, pm.corr.ravel())
    by_prob = np.where(pm.phase_probability.max(-1) > 0, pm.phase_probability.argmax(-1), -1).ravel()
    crystalline = truth.phase.ravel() >= 0
    result["phase_accuracy_network_only"] = float((by_prob[crystalline] == truth.phase.ravel()[crystalline]).mean())
    result.update(seconds=seconds, patterns_per_s=pm.phase_index.size / seconds)
    return result, pm


def run_single_phase(model: str, bragg, truth) -> dict:
    from .common import load_mapper

    mapper = load_mapper(model)
    t0 = time.perf_counter()
    om = mapper.match_orientations(bragg, progress_bar=False)
    seconds = time.perf_counter() - t0
    cu = truth.phase == 0
    strict = misorientation_deg(om.matrix[:, :, 0][cu], truth.orientation_matrices[cu], mapper.symmetry)
    return {"phase0_strict": summarize_errors(strict), "seconds": seconds, "patterns_per_s": om.corr[..., 0].size / seconds}


def run_acom_phases(bragg, truth, n: int, seed: int, symmetry) -> dict:
    """ACOM with both plans on ``n`` random crystalline positions, then CrystalPhase on them."""
    from py4DSTEM.process.diffraction import CrystalPhase

    from ..simulation.simulate import example_crystal

    crystalline = np.flatnonzero(truth.phase.ravel() >= 0)
    pick = crystalline[random_positions(len(crystalline), n, seed)]
    sub = subset_braggvectors(bragg, pick)
    crystals = [example_crystal("Cu"), example_crystal("Cu2O")]
    t0 = time.perf_counter()
    for c in crystals:
        acom_plan(c)
    plan_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps = [acom_match(c, sub) for c in crystals]
    match_seconds = time.perf_counter() - t0
    for c, om in zip(crystals, maps):
        c.orientation_map = om
    corr = np.stack([om.corr[0, :, 0] for om in maps], 1)  # (n, 2)
    matrix = np.stack([om.matrix[0, :, 0] for om in maps], 1)  # (n, 2, 3, 3)
    phase = corr.argmax(1)
    tp, tm = truth.phase.ravel()[pick], truth.orientation_matrices.reshape(-1, 3, 3)[pick]
    acom = evaluate_phases(phase, matrix[np.arange(len(pick)), phase], tp, tm, symmetry, corr.max(1))
    per_pattern = match_seconds / len(pick)
    acom.update(n=len(pick), plan_seconds=plan_seconds, seconds_per_pattern=per_pattern,
                extrapolated_seconds=plan_seconds + per_pattern * truth.phase.size, extrapolated=True)
    cp = CrystalPhase(crystals, crystal_names=["Cu", "Cu2O"], orientation_maps=maps)
    t0 = time.perf_counter()
    with _quiet():
        cp.quantify_phase(sub, progress_bar=False)
    cp_seconds = time.perf_counter() - t0
    weights = np.stack([cp.phase_weights[0, :, [i for i, (c, _) in enumerate(cp.crystal_identity) if c == k]].sum(0)
                        for k in range(2)], 1)
    cp_phase = weights.argmax(1)
    crystal_phase = {"phase_accuracy": float((cp_phase == tp).mean()), "seconds_per_pattern": cp_seconds / len(pick),
                     "extrapolated_seconds": acom["extrapolated_seconds"] + cp_seconds / len(pick) * truth.phase.size,
                     "extrapolated": True, "n": len(pick)}
    return {"acom": acom, "crystal_phase": crystal_phase, "pick": pick}


def main(argv=None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Cu+Cu2O", help="a pretrained joint model name or a model file")
    parser.add_argument("--single", default="Cu", help="the single-phase Cu model to compare orientations with")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--grains", type=int, default=60)
    parser.add_argument("--thickness", default="21.71", help="one value (A) or a range 'lo,hi'")
    parser.add_argument("--acom-n", type=int, default=500, help="ACOM / CrystalPhase on this many positions (0: skip)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    thickness = tuple(float(x) for x in args.thickness.split(",")) if "," in args.thickness else float(args.thickness)
    bragg, truth = make_scan(args.size, args.grains, thickness, args.seed)
    joint, pm = run_joint(args.model, bragg, truth)
    report = {"size": args.size, "grains": args.grains, "thickness": thickness, "threads": torch.get_num_threads(),
              "phase_fraction_truth": float((truth.phase == 1).sum() / max((truth.phase >= 0).sum(), 1)),
              "joint": joint, "single_phase_cu": run_single_phase(args.single, bragg, truth)}
    if args.acom_n:
        from ..core.symmetry import point_group_rotations
        from ..simulation.simulate import example_crystal

        symmetry = point_group_rotations(example_crystal("Cu")).numpy()  # m-3m, both phases
        acom = run_acom_phases(bragg, truth, args.acom_n, args.seed, symmetry)
        pick = acom.pop("pick")
        report.update(acom)
        same = evaluate_phases(pm.phase_index.ravel()[pick], pm.matrix().reshape(-1, 3, 3)[pick], truth.phase.ravel()[pick],
                               truth.orientation_matrices.reshape(-1, 3, 3)[pick], symmetry)
        report["joint_on_acom_positions"] = same
    _print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
    return report


def _print(r: dict) -> None:
    n = r["size"] ** 2
    print(f"\n### Cu / Cu2O, {r['size']}x{r['size']} scan, {r['grains']} grains, thickness {r['thickness']} A "
          f"({r['joint']['n_crystalline']} crystalline positions, {r['phase_fraction_truth']:.0%} Cu2O)\n")
    print("| method | positions | time for the scan | phase accuracy | median strict (right phase) | ≤5° strict | ≤5° flip |")
    print("|---|---|---|---|---|---|---|")
    j = r["joint"]
    print(f"| transformer `match_phases` | all {n} | {j['seconds']:.1f} s ({j['patterns_per_s']:,.0f}/s) | "
          f"{j['phase_accuracy']:.2%} | {j['strict']['median']:.2f}° | {j['strict']['within_5']:.1%} | {j['flip']['within_5']:.1%} |")
    if "acom" in r:
        s, a, c = r["joint_on_acom_positions"], r["acom"], r["crystal_phase"]
        print(f"| transformer, ACOM's positions | {a['n']} | | {s['phase_accuracy']:.2%} | {s['strict']['median']:.2f}° | "
              f"{s['strict']['within_5']:.1%} | {s['flip']['within_5']:.1%} |")
        print(f"| ACOM, 2 plans, larger corr | {a['n']} | {a['extrapolated_seconds']:.0f} s (extrapolated) | "
              f"{a['phase_accuracy']:.2%} | {a['strict']['median']:.2f}° | {a['strict']['within_5']:.1%} | {a['flip']['within_5']:.1%} |")
        print(f"| ACOM + CrystalPhase.quantify_phase | {c['n']} | {c['extrapolated_seconds']:.0f} s (extrapolated) | "
              f"{c['phase_accuracy']:.2%} | | | |")
        print(f"\ntransformer {a['extrapolated_seconds'] / j['seconds']:.0f}x faster than ACOM with two plans (same run)")
    cu, single = j["phase0_strict"], r["single_phase_cu"]["phase0_strict"]
    print(f"Cu grains, median strict: joint model {cu['median']:.2f}° vs single-phase Cu model {single['median']:.2f}°; "
          f"Cu2O grains: {j['phase1_strict']['median']:.2f}°")
    print(f"phase from the network's probability alone: {j['phase_accuracy_network_only']:.2%}; "
          f"vacuum positions called crystalline: {j['vacuum_called_crystal']:.1%}; corr AUC {j['corr_auc']:.3f}")


if __name__ == "__main__":
    main()
