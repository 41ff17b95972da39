"""Benchmark: measured Bragg vectors with no ground truth (py4DSTEM's LiCoO2 / LiMn2O4 / Li2MnO3 test scan).

``python -m py4dstem_transformer.benchmarks.real_data --model MODEL [--data DIR] [--json FILE]
[--figures DIR]``

On the same ``PointListArray`` (``DIR/braggdisks_cali.h5``, crystals from ``DIR/*.cif``):

* the calibration check (:func:`~..evaluation.rings.calibration_check`): at which scale each phase's rings fit;
* the transformer: ``TransformerOrientationMap(crystals, MODEL).match_phases`` (defaults), timed;
* py4DSTEM's ACOM: one plan per crystal, py4DSTEM's own for these data (:data:`ACOM_PLAN`,
  ``zone_axis_range="auto"``, 300 kV), ``match_orientations`` on every position, the larger ``corr`` picks
  the phase; then py4DSTEM's ``CrystalPhase.quantify_phase`` on ACOM's orientations; all timed;
* checks that need no ground truth (:mod:`~..evaluation.agreement`): how often the two methods agree (same
  phase, within 5 deg), overall and where both are confident; how often each method's answer agrees with a
  neighbour's (spatial coherence), and how that varies with the transformer's confidence;
* which answer explains the observed disks (:func:`~..evaluation.overlay.disk_fit`, py4DSTEM's kinematic
  simulation of each answer) on ``--fit-n`` random positions with >= 15 peaks, and on ``--full-plan-n`` of
  them ACOM with a fuller, slower plan (:data:`FULL_PLAN`).

``MODEL`` is a joint model for the three phases in the order LiCoO2, LiMn2O4, Li2MnO3; ``make_model`` (the
``--train-dir`` option) trains one with the project's own commands and is resumable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
import warnings
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["DATA", "CIFS", "read_scan", "crop", "read_crystals", "make_model", "ACOM_PLAN", "FULL_PLAN", "acom_phase_map", "crystal_phase_map",
           "disk_fits", "save_reference", "load_reference",
           "summarize", "main"]

#: Where the data lie, relative to the repository root (``../shared/data/lco``).
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "lco")
#: The phases' CIF files, in the model's order, with their names.
CIFS = (("LiCoO2", "LCO.cif"), ("LiMn2O4", "LiMn2O4.cif"), ("Li2MnO3", "Li2MnO3.cif"))


def read_scan(data: str = DATA):
    """py4DSTEM's calibrated ``PointListArray`` (80 x 58 positions, 1/A, direct beam at the origin)."""
    import py4DSTEM

    path = os.path.join(data, "braggdisks_cali.h5")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {path}: pass --data, the folder with braggdisks_cali.h5 and the CIF files")
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return py4DSTEM.read(path)


def crop(pointlists, rows: slice, cols: slice):
    """A new ``PointListArray`` of the positions ``[rows, cols]`` of ``pointlists`` (copies; the input is
    not changed)."""
    rx, ry = range(*rows.indices(pointlists.shape[0])), range(*cols.indices(pointlists.shape[1]))
    if not len(rx) or not len(ry):
        raise ValueError(f"empty crop {rows}, {cols} of a {pointlists.shape} scan")
    return _copy_positions(pointlists, [(x, y) for x in rx for y in ry], (len(rx), len(ry)))


def _copy_positions(pointlists, positions, shape):
    """A new ``PointListArray`` of ``shape`` holding copies of ``pointlists`` at ``positions`` ((rx, ry) pairs,
    C order over ``shape``)."""
    from emdfile import PointListArray

    out = PointListArray(pointlists.dtype, shape, name=pointlists.name)
    for b, (x, y) in enumerate(positions):
        out[np.unravel_index(b, shape)].add(pointlists[int(x), int(y)].data.copy())
    return out


def _braggvectors(bragg_peaks):
    """What py4DSTEM's ACOM and ``CrystalPhase`` read: ``BraggVectors`` (a ``PointListArray`` is wrapped)."""
    from ..io.peaks import braggvectors_from_pointlistarray

    if type(bragg_peaks).__name__ == "PointListArray":
        return braggvectors_from_pointlistarray(bragg_peaks)
    return bragg_peaks


def read_crystals(data: str = DATA) -> list:
    """The three phases' py4DSTEM Crystals from their CIF files, in :data:`CIFS` order."""
    from ..core.crystal import crystal_from_cif

    return [crystal_from_cif(os.path.join(data, f)) for _, f in CIFS]


def make_model(out: str, data: str = DATA, minutes: float = 30.0, directions=(12000, 2000, 8000),
               num_thicknesses: int = 8, calibrate_n: int = 1000, progress_bar: bool = True) -> str:
    """Train the joint model the benchmark maps with (resumable; every file under ``out``): one Bloch-wave
    training set per phase (``directions`` random beam directions each; the cubic spinel's fundamental zone is
    the smallest), ``train`` for ``minutes``, ``calibrate``. Returns the model's path."""
    from ..mapping.calibrate import attach_calibration, calibrate
    from ..mapping.mapper import TransformerOrientationMap
    from ..simulation.phases import PhaseTrainingSet
    from ..simulation.simulate import generate_training_set
    from ..simulation.training_set import TrainingSet
    from ..training.trainer import train

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "joint.pt")
    if os.path.exists(path):
        return path
    crystals, sets = read_crystals(data), []
    for (name, _), crystal, n, seed in zip(CIFS, crystals, directions, (1, 2, 3)):
        set_path = os.path.join(out, f"{name}.h5")
        if not os.path.exists(set_path):
            ts = generate_training_set(crystal, num_zone_axes=n, num_thicknesses=num_thicknesses,
                                       n_jobs=os.cpu_count() or 1, seed=seed, progress_bar=progress_bar)
            ts.save(set_path, overwrite=True)
        sets.append(TrainingSet.load(set_path))
    checkpoints = os.path.join(out, "checkpoints")
    model = train(PhaseTrainingSet(sets, names=[n for n, _ in CIFS]), max_minutes=minutes, checkpoint_dir=checkpoints,
                  resume=os.path.exists(os.path.join(checkpoints, "last.pt")), progress_bar=progress_bar)
    attach_calibration(model, calibrate(TransformerOrientationMap(crystals, model), n=calibrate_n,
                                        progress_bar=progress_bar))
    model.save(path)
    return path


#: py4DSTEM's own ACOM plan for these data (its unit tests'): structure factors to 1.7 1/A without the weakest
#: (``|F| < 0.1``), beam directions every 1 deg, in-plane every 5 deg, 300 kV. A fuller plan (:data:`FULL_PLAN`)
#: took 2.0 s per pattern for the three phases here, 2.6 hours for this scan.
ACOM_PLAN = dict(k_max=1.7, tol_structure_factor=0.1, angle_step_zone_axis=1.0, angle_step_in_plane=5.0)


def acom_phase_map(crystals: Sequence, bragg_peaks, accel_voltage: float = 300e3, plan: Optional[dict] = None,
                   progress_bar: bool = False) -> dict:
    """py4DSTEM's ACOM, one plan per crystal (``plan``: :func:`~..evaluation.compare.acom_plan`'s keywords,
    default :data:`ACOM_PLAN`); the phase is the crystal with the largest ``corr``.

    Works on private copies of ``crystals``; returns ``crystals`` (the copies, each with its
    ``orientation_map`` set, as ``CrystalPhase`` needs), ``maps``, ``phase_index`` (Rx, Ry; -1 where no plan
    matched), ``corr`` (Rx, Ry: the winner's), ``matrix`` (Rx, Ry, 3, 3), ``plan_s`` and ``match_s``.
    """
    from ..core.crystal import private_copy
    from ..evaluation.compare import acom_match, acom_plan

    bragg_peaks = _braggvectors(bragg_peaks)
    copies = [private_copy(c) for c in crystals]
    t0 = time.perf_counter()
    for c in copies:
        acom_plan(c, accel_voltage, **(ACOM_PLAN if plan is None else plan))
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps = [acom_match(c, bragg_peaks, progress_bar) for c in copies]
    match_s = time.perf_counter() - t0
    for c, om in zip(copies, maps):
        c.orientation_map = om
    corr = np.stack([om.corr[:, :, 0] for om in maps], -1)
    phase = np.where(corr.max(-1) > 0, corr.argmax(-1), -1)
    matrix = np.stack([om.matrix[:, :, 0] for om in maps], 2)  # (Rx, Ry, n, 3, 3)
    best = np.take_along_axis(matrix, np.maximum(phase, 0)[:, :, None, None, None], 2)[:, :, 0]
    return {"crystals": copies, "maps": maps, "phase_index": phase, "corr": corr.max(-1), "matrix": best,
            "plan_s": plan_s, "match_s": match_s}


def crystal_phase_map(acom: dict, bragg_peaks, names: Sequence[str], progress_bar: bool = False) -> dict:
    """py4DSTEM's ``CrystalPhase.quantify_phase`` on ACOM's orientations (its defaults); the phase is the crystal
    with the largest weight (-1 where every weight is 0). Returns ``phase_index``, ``weights`` (Rx, Ry, n),
    ``reliability`` and ``seconds``."""
    from py4DSTEM.process.diffraction import CrystalPhase

    bragg_peaks = _braggvectors(bragg_peaks)
    cp = CrystalPhase(acom["crystals"], crystal_names=list(names))
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        cp.quantify_phase(bragg_peaks, progress_bar=progress_bar)
    seconds = time.perf_counter() - t0
    identity = np.asarray(cp.crystal_identity)  # (fits, 2): crystal, match
    weights = np.zeros(cp.phase_weights.shape[:2] + (len(names),))
    for fit, (c, _) in enumerate(identity):
        weights[:, :, int(c)] += cp.phase_weights[:, :, fit]
    phase = np.where(weights.max(-1) > 0, weights.argmax(-1), -1)
    return {"phase_index": phase, "weights": weights, "reliability": np.asarray(cp.phase_reliability),
            "seconds": seconds}


def save_reference(path: str, acom: dict, cp: Optional[dict]) -> None:
    """Write ACOM's (and CrystalPhase's) per-position answers and times to ``path`` (.npz), so that the slow
    reference runs once per data set, not once per model."""
    arrays = {k: np.asarray(acom[k]) for k in ("phase_index", "corr", "matrix", "plan_s", "match_s")}
    if cp is not None:
        arrays.update({f"cp_{k}": np.asarray(cp[k]) for k in ("phase_index", "weights", "reliability", "seconds")})
    np.savez_compressed(path, **arrays)


def load_reference(path: str) -> tuple:
    """``(acom, cp)`` as :func:`save_reference` wrote them (``cp`` None if it was not run)."""
    with np.load(path) as f:
        acom = {k: f[k] for k in ("phase_index", "corr", "matrix")}
        acom.update(plan_s=float(f["plan_s"]), match_s=float(f["match_s"]))
        cp = ({k: f[f"cp_{k}"] for k in ("phase_index", "weights", "reliability")} if "cp_phase_index" in f else None)
        if cp is not None:
            cp["seconds"] = float(f["cp_seconds"])
    return acom, cp


def summarize(ours: dict, acom: dict, symmetries: Sequence[np.ndarray], names: Sequence[str],
              cp: Optional[dict] = None, mask: Optional[np.ndarray] = None, confident: float = 0.5,
              tol_deg: float = 5.0) -> dict:
    """The no-ground-truth figures on ``mask`` (default: every position).

    ``ours`` and ``acom``: ``phase_index`` (Rx, Ry), ``matrix`` (Rx, Ry, 3, 3), ``corr`` (Rx, Ry). "Both
    confident": the transformer's ``corr`` (a calibrated probability of < 5 deg) >= ``confident`` and ACOM's
    ``corr`` at or above its median over the positions it matched.
    """
    from ..evaluation.agreement import coherence, method_agreement

    shape = ours["phase_index"].shape
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    acom_matched = acom["phase_index"] >= 0
    acom_sure = acom_matched & (acom["corr"] >= np.median(acom["corr"][acom_matched & mask]))
    ours_sure = (ours["phase_index"] >= 0) & (ours["corr"] >= confident)
    both = mask & ours_sure & acom_sure
    out = {"positions": int(mask.sum()), "confident": confident,
           "ours_answered": float((ours["phase_index"][mask] >= 0).mean()),
           "ours_confident": float(ours_sure[mask].mean()), "acom_answered": float(acom_matched[mask].mean()),
           "both_confident": int(both.sum())}
    for label, where in (("all", mask), ("both_confident", both)):
        a = method_agreement(ours["matrix"], ours["phase_index"], acom["matrix"], acom["phase_index"], symmetries,
                             tol_deg, where)
        out[f"agreement_{label}"] = {k: v for k, v in a.items() if k != "misorientation"}
    maps = {}
    for label, m in (("ours", ours), ("acom", acom)):
        c = coherence(m["matrix"], m["phase_index"], symmetries, tol_deg, mask & (m["phase_index"] >= 0))
        out[f"coherence_{label}"] = {k: v for k, v in c.items() if k != "map"}
        out[f"phase_fractions_{label}"] = {n: float((m["phase_index"][mask] == i).mean()) for i, n in enumerate(names)}
        maps[label] = c["map"]  # agreeing neighbours per position (the mask does not change it)
    # is the confidence informative? coherence of the transformer's answers by confidence bin
    bins = [0.0, 0.25, 0.5, 0.75, 0.9, 1.0001]
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = mask & (ours["phase_index"] >= 0) & (ours["corr"] >= lo) & (ours["corr"] < hi)
        rows.append({"corr_from": lo, "corr_to": min(hi, 1.0), "n": int(sel.sum()),
                     "any_neighbour": float((maps["ours"][sel] > 0).mean()) if sel.any() else float("nan")})
    out["coherence_by_confidence"] = rows
    if cp is not None:
        has = mask & (cp["phase_index"] >= 0)
        out["crystalphase_fractions"] = {n: float((cp["phase_index"][mask] == i).mean()) for i, n in enumerate(names)}
        out["ours_vs_crystalphase_same_phase"] = float((cp["phase_index"][has] == ours["phase_index"][has]).mean())
        out["acom_vs_crystalphase_same_phase"] = float((cp["phase_index"][has] == acom["phase_index"][has]).mean())
    return out


#: A fuller ACOM plan (every reflection with ``|F| >= 0.01`` to 2 1/A, py4DSTEM's default 2 deg / 2 deg steps),
#: run on a sample only: it takes seconds per pattern for the three phases.
FULL_PLAN = dict(k_max=2.0, tol_structure_factor=0.01, angle_step_zone_axis=2.0, angle_step_in_plane=2.0)


def disk_fits(scan, crystals, answers: dict, positions: np.ndarray, accel_voltage: float = 300e3) -> dict:
    """:func:`~..evaluation.overlay.disk_fit` of each method's answer at ``positions`` ((n, 2) scan indices).

    ``answers``: label -> ``(phase_index (Rx, Ry) or (n,), matrix (Rx, Ry, 3, 3) or (n, 3, 3))`` (per-position
    arrays of the whole scan, or already of the n positions). Returns label -> (n,) F1 (0 where no answer).
    """
    from ..evaluation.overlay import disk_fit, observed_disks
    from ..io.peaks import as_peaks_source

    source = as_peaks_source(scan)  # flat peaks, read once
    out = {label: np.zeros(len(positions)) for label in answers}
    for i, (rx, ry) in enumerate(positions):
        obs = observed_disks(source, int(rx), int(ry))
        for label, (phase, matrix) in answers.items():
            p, m = (phase[i], matrix[i]) if np.ndim(phase) == 1 else (phase[rx, ry], matrix[rx, ry])
            if p >= 0:
                out[label][i] = disk_fit(obs, crystals[int(p)], m, accel_voltage=accel_voltage)["f1"]
    return out


def _fit_summary(fits: dict, a: str, b: str) -> dict:
    x, y = fits[a], fits[b]
    return {"n": int(len(x)), f"{a}_median_f1": float(np.median(x)), f"{b}_median_f1": float(np.median(y)),
            f"{a}_better": float((x > y + 0.05).mean()), f"{b}_better": float((y > x + 0.05).mean())}


def _positions(pointlists, flat: np.ndarray):
    """A 1 x len(flat) ``PointListArray`` of the given flat positions (copies), for timing."""
    return _copy_positions(pointlists, [np.unravel_index(int(b), pointlists.shape) for b in flat], (1, len(flat)))


def _ours(phase_map) -> dict:
    return {"phase_index": phase_map.phase_index, "matrix": phase_map.matrix(), "corr": phase_map.corr}


def markdown(report: dict) -> str:
    s, t = report["summary"], report["timing"]
    lines = [
        "| | transformer | py4DSTEM ACOM (3 plans) |", "|---|---|---|",
        f"| time per pattern | {1e3 * t['ours_per_pattern_s']:.1f} ms (whole scan, {report['positions']} positions) | "
        f"{1e3 * t['acom_per_pattern_s']:.0f} ms ({t['acom_timed_positions']} random positions; + {t['acom_plan_s']:.1f} s "
        "for the plans) |",
        f"| ratio | {t['acom_per_pattern_s'] / t['ours_per_pattern_s']:.0f}× faster | 1× |",
        f"| positions answered | {s['ours_answered']:.1%} | {s['acom_answered']:.1%} |",
        f"| phase fractions | {', '.join(f'{k} {v:.0%}' for k, v in s['phase_fractions_ours'].items())} | "
        f"{', '.join(f'{k} {v:.0%}' for k, v in s['phase_fractions_acom'].items())} |",
        f"| agrees with a neighbour (≤5°) | {s['coherence_ours']['any_neighbour']:.1%} | "
        f"{s['coherence_acom']['any_neighbour']:.1%} |",
        f"| neighbour pairs agreeing | {s['coherence_ours']['pairs']:.1%} | {s['coherence_acom']['pairs']:.1%} |",
        "", f"Agreement (same phase and ≤5°): {s['agreement_all']['same_orientation']:.1%} of all positions "
        f"(same phase {s['agreement_all']['same_phase']:.1%}); where both are confident "
        f"({s['both_confident']} positions): {s['agreement_both_confident']['same_orientation']:.1%} "
        f"(same phase {s['agreement_both_confident']['same_phase']:.1%}).",
    ]
    if "crystalphase_fractions" in s:
        lines.append(f"CrystalPhase ({t['crystalphase_s']:.1f} s): phase fractions "
                     f"{', '.join(f'{k} {v:.0%}' for k, v in s['crystalphase_fractions'].items())}; same phase as "
                     f"the transformer {s['ours_vs_crystalphase_same_phase']:.1%}, as ACOM "
                     f"{s['acom_vs_crystalphase_same_phase']:.1%}.")
    if "disk_fit" in s:
        d = s["disk_fit"]
        lines.append(f"Disk fit (F1 of observed vs py4DSTEM-simulated disks, {d['n']} random positions with ≥ 15 peaks): "
                     f"median transformer {d['ours_median_f1']:.2f}, ACOM {d['acom_median_f1']:.2f}; transformer better "
                     f"at {d['ours_better']:.0%}, ACOM at {d['acom_better']:.0%}.")
    if "disk_fit_full_plan" in s:
        d = s["disk_fit_full_plan"]
        lines.append(f"ACOM with a fuller plan ({d['acom_full_per_pattern_s']:.2f} s per pattern) on {d['n']} of them: "
                     f"median F1 {d['acom_full_median_f1']:.2f} vs transformer {d['ours_median_f1']:.2f}; transformer "
                     f"better at {d['ours_better']:.0%}, ACOM at {d['acom_full_better']:.0%}.")
    lines.append("Transformer confidence vs coherence: " + "; ".join(
        f"corr {r['corr_from']:.2f}–{r['corr_to']:.2f}: {r['any_neighbour']:.0%} (n={r['n']})"
        for r in s["coherence_by_confidence"] if r["n"]))
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the joint model (LiCoO2, LiMn2O4, Li2MnO3); default: --train-dir's")
    parser.add_argument("--train-dir", default="real_data_model",
                        help="without --model: train one here with the project's commands (resumable)")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget with --train-dir")
    parser.add_argument("--data", default=DATA, help="folder with braggdisks_cali.h5 and the CIF files")
    parser.add_argument("--no-crystalphase", action="store_true", help="skip py4DSTEM's CrystalPhase")
    parser.add_argument("--reference", help="ACOM's and CrystalPhase's answers (.npz): read if it exists, else "
                        "computed and written there")
    parser.add_argument("--fit-n", type=int, default=300,
                        help="disk fit of both answers on this many random positions with >= 15 peaks")
    parser.add_argument("--full-plan-n", type=int, default=40,
                        help="ACOM with a fuller plan (FULL_PLAN) on the first this many of them (0: skip)")
    parser.add_argument("--timing-n", type=int, default=200,
                        help="ACOM is timed again on this many random positions in this run, beside the transformer")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--figures", help="write the maps, the agreement and the radial histogram here (PNG)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from ..core.crystal import private_copy
    from ..evaluation.rings import calibration_check
    from ..io.peaks import peaks_from_pointlistarray
    from ..mapping.mapper import TransformerOrientationMap

    scan, crystals = read_scan(args.data), read_crystals(args.data)
    names = [n for n, _ in CIFS]
    model = args.model or make_model(args.train_dir, args.data, args.minutes, progress_bar=not args.no_progress)
    rings = calibration_check(scan, crystals, names)
    mapper = TransformerOrientationMap([private_copy(c) for c in crystals], model)
    t0 = time.perf_counter()
    phase_map = mapper.match_phases(scan, progress_bar=not args.no_progress)
    ours_s = time.perf_counter() - t0
    ours = _ours(phase_map)
    if args.reference and os.path.exists(args.reference):
        acom, cp = load_reference(args.reference)
    else:
        bragg = _braggvectors(scan)  # once, for ACOM and CrystalPhase
        acom = acom_phase_map(crystals, bragg, progress_bar=not args.no_progress)
        cp = None if args.no_crystalphase else crystal_phase_map(acom, bragg, names, progress_bar=not args.no_progress)
        if args.reference:
            save_reference(args.reference, acom, cp)
    # ACOM's time per pattern, measured in this run on random positions (the whole-scan run may be cached)
    rng = np.random.default_rng(0)
    flat = np.sort(rng.choice(int(np.prod(scan.shape)), size=min(args.timing_n, int(np.prod(scan.shape))), replace=False))
    timing = acom_phase_map(crystals, _positions(scan, flat))
    acom_per_pattern = timing["match_s"] / len(flat)
    symmetries = [p.rotations for p in mapper.phases]
    summary = summarize(ours, acom, symmetries, names, cp)
    # who explains the disks: py4DSTEM's kinematic simulation of each answer against the observed disks
    counts = peaks_from_pointlistarray(scan).counts.reshape(scan.shape)
    rich = np.argwhere((counts >= 15) & (ours["phase_index"] >= 0) & (acom["phase_index"] >= 0))
    sample = rich[np.random.default_rng(1).choice(len(rich), size=min(args.fit_n, len(rich)), replace=False)]
    fits = disk_fits(scan, crystals, {"ours": (ours["phase_index"], ours["matrix"]),
                                      "acom": (acom["phase_index"], acom["matrix"])}, sample)
    summary["disk_fit"] = _fit_summary(fits, "ours", "acom")
    if args.full_plan_n:
        few = sample[:args.full_plan_n]
        full = acom_phase_map(crystals, _positions(scan, np.ravel_multi_index(few.T, scan.shape)), plan=FULL_PLAN)
        full_fits = disk_fits(scan, crystals, {"ours": (ours["phase_index"], ours["matrix"]),
                                               "acom_full": (full["phase_index"][0], full["matrix"][0])}, few)
        summary["disk_fit_full_plan"] = {**_fit_summary(full_fits, "ours", "acom_full"),
                                         "acom_full_per_pattern_s": full["match_s"] / len(few), "plan": FULL_PLAN}
    report = {"data": os.path.abspath(args.data), "model": str(model), "positions": int(np.prod(scan.shape)),
              "self_calibration": getattr(mapper.self_calibration, "note", None), "voltage": mapper.voltage_note,
              "calibration_check": {k: {a: b for a, b in v.items() if a != "curve"}
                                    for k, v in rings["phases"].items()},
              "timing": {"ours_s": ours_s, "ours_per_pattern_s": ours_s / int(np.prod(scan.shape)),
                         "acom_per_pattern_s": acom_per_pattern, "acom_timed_positions": int(len(flat)),
                         "acom_plan_s": timing["plan_s"], "acom_scan_s_reference_run": acom["match_s"],
                         "crystalphase_s": cp["seconds"] if cp else None},
              "summary": summary}
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
    if args.figures:
        _figures(args.figures, scan, crystals, names, ours, acom, symmetries)
    return report


def _figures(folder, scan, crystals, names, ours, acom, symmetries) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation.agreement import coherence
    from ..evaluation.rings import plot_radial_histogram
    from ..io.phase_map import PHASE_COLORS

    os.makedirs(folder, exist_ok=True)
    paths = []
    fig, ax = plot_radial_histogram(scan, crystals, names, returnfig=True)
    paths.append(os.path.join(folder, "real_data_rings.png"))
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["black"] + list(PHASE_COLORS[:len(names)]))
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
    for ax, (title, m) in zip(axes[:2], (("transformer phase", ours), ("ACOM phase", acom))):
        ax.imshow(m["phase_index"] + 1, cmap=cmap, vmin=0, vmax=len(names), interpolation="nearest")
        ax.set_title(title)
    axes[2].imshow(ours["corr"], cmap="gray", vmin=0, vmax=1)
    axes[2].set_title("transformer confidence")
    for ax, (title, m) in zip(axes[3:], (("transformer:\nneighbours agreeing ≤5°", ours), ("ACOM:\nneighbours agreeing ≤5°", acom))):
        im = ax.imshow(coherence(m["matrix"], m["phase_index"], symmetries)["map"], cmap="viridis", vmin=0, vmax=4)
        ax.set_title(title)
    fig.colorbar(im, ax=axes[3:].tolist(), shrink=0.8)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    paths.append(os.path.join(folder, "real_data_maps.png"))
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close("all")
    return paths


if __name__ == "__main__":
    main()
