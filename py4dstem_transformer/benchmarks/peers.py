"""Peers beside ours and ACOM on the same patterns: quantem (py4DSTEM's successor, in its own environment) and pyxem.

``robustness --export-peaks DIR`` writes each condition's patterns as ours and ACOM were given them, with the truth
and both methods' errors; :mod:`.quantem_acom`, run with quantem's Python, maps them; this module reads both and
prints one table, pattern by pattern against ours and ACOM::

    python -m py4dstem_transformer.benchmarks.robustness --n 400 --acom-n 400 --export-peaks peers/
    python -m py4dstem_transformer.benchmarks.peers peers/*.npz --quantem-python qenv/bin/python

Each exported ``<condition>_seed<seed>.npz`` gets ``<condition>_seed<seed>.quantem.npz`` beside it (computed once;
kept). Strict = within 5 deg under the crystal's proper rotations, the beam flip not allowed; a pattern quantem
left without a match counts as wrong (180 deg). quantem's AUC reads its ``reliability`` (best minus second-best
correlation), its confidence. Its patterns/s count matching and refinement, not the plan (as ACOM's).

``--pyxem`` (pyxem 0.21 installed here, beside py4DSTEM) adds pyxem's template matching
(:func:`~.pyxem_matching.pyxem_match_arrays`: the peaks drawn as spots, its polar-transform recipe, a 1 deg template
library), kept in ``<name>.pyxem.npz``. pyxem's frame can differ from ours by 180 deg about the beam, so it is
compared with the beam flip allowed only (ours and ACOM then too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np

from .robustness import CONDITIONS

__all__ = ["QUANTEM_SCRIPT", "write_peaks", "errors_deg", "result_path", "run_quantem", "run_pyxem", "run_pyxem_apart", "compare_file", "markdown_table", "main"]

#: The script quantem's environment runs (it imports nothing of this package).
QUANTEM_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quantem_acom.py")


def write_peaks(path, bragg, crystal, accel_voltage: float, precession_deg: Optional[float] = None,
                k_max: Optional[float] = None, **extra) -> None:
    """Write ``bragg``'s calibrated peaks (every position, C order) for a peer in another environment: ``qx, qy``
    (1/A, lab frame, as the BraggVectors' calibration states them), ``intensity``, ``offsets`` (positions + 1), the
    crystal (``cell`` A, fractional ``positions``, ``numbers``), ``k_max`` 1/A (the reflections a peer computes;
    default the package's), ``accel_voltage`` V, ``precession_deg``; and ``extra`` arrays as given."""
    from ..core.defaults import K_MAX

    rx, ry = bragg.Rshape
    cells = [bragg.cal[i, j].data for i in range(rx) for j in range(ry)]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in cells])])
    field = lambda name: np.concatenate([np.asarray(c[name], np.float64) for c in cells])  # noqa: E731
    np.savez(path, qx=field("qx"), qy=field("qy"), intensity=field("intensity"), offsets=offsets,
             cell=np.asarray(crystal.lat_real, np.float64), positions=np.asarray(crystal.positions, np.float64),
             numbers=np.asarray(crystal.numbers), k_max=K_MAX if k_max is None else float(k_max), accel_voltage=float(accel_voltage),
             precession_deg=float(precession_deg or 0.0), **extra)


def errors_deg(matrix: np.ndarray, truth: np.ndarray, symmetry: np.ndarray, allow_beam_flip: bool = False) -> np.ndarray:
    """(n,) :func:`~..evaluation.compare.misorientation_deg` of ``matrix`` (n, 3, 3) against ``truth``; 180 where a
    row is NaN (no answer)."""
    from ..evaluation.compare import misorientation_deg

    m = np.asarray(matrix, np.float64)
    none = ~np.isfinite(m).all((-1, -2))
    e = misorientation_deg(np.where(none[:, None, None], np.eye(3), m), truth, symmetry, allow_beam_flip)
    e[none] = 180.0
    return e


def result_path(peaks_path: str, peer: str) -> str:
    """Where a peer's answers for ``peaks_path`` are kept: ``<name>.<peer>.npz`` beside it."""
    return peaks_path.replace(".npz", f".{peer}.npz")


def run_quantem(peaks_path: str, python: str, out_path: Optional[str] = None) -> str:
    """Map ``peaks_path`` with quantem in the environment of ``python`` (unless its output exists); its path."""
    out_path = out_path or result_path(peaks_path, "quantem")
    return _run_apart([python, QUANTEM_SCRIPT, peaks_path, out_path], out_path, f"quantem failed on {peaks_path} ({python})")


def _run_apart(command: list, out_path: str, failure: str) -> str:
    """Run ``command`` (a peer writing ``out_path``) in a process of its own unless ``out_path`` exists; ``out_path``.
    A failure raises RuntimeError: ``failure`` and the end of its error output."""
    if not os.path.exists(out_path):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{failure}:\n{done.stderr[-3000:]}")
    return out_path


def run_pyxem(peaks_path: str, out_path: Optional[str] = None) -> str:
    """Map ``peaks_path`` with pyxem here (unless its output exists); its path. The file holds ``matrix``,
    ``library_s``, ``match_s`` (all patterns, after an untimed warm-up) and ``call_s`` (a call's cost whatever its
    size, :func:`~.pyxem_matching.pyxem_match_arrays`)."""
    from py4DSTEM.process.diffraction import Crystal

    from .pyxem_matching import pyxem_match_arrays

    out_path = out_path or result_path(peaks_path, "pyxem")
    if not os.path.exists(out_path):
        z = np.load(peaks_path)
        crystal = Crystal(z["positions"], z["numbers"], z["cell"])
        timings = {}
        matrix, library_s, match_s = pyxem_match_arrays(crystal, z["qx"], z["qy"], z["intensity"], z["offsets"],
                                                        float(z["accel_voltage"]), k_max=float(z["k_max"]),
                                                        timings=timings)
        import pyxem

        np.savez(out_path, matrix=matrix, library_s=library_s, match_s=match_s, call_s=timings["call_s"],
                 pyxem=pyxem.__version__)
    return out_path


def run_pyxem_apart(peaks_path: str, out_path: Optional[str] = None) -> str:
    """:func:`run_pyxem` in a process of its own (this Python): pyxem's imports, threads and memory stay out of the
    process that times ours (the bench; after pyxem ran in it, ours ran ~1.5x slower there). Its path; a failure
    raises RuntimeError with the end of its output."""
    out_path = out_path or result_path(peaks_path, "pyxem")
    return _run_apart([sys.executable, "-m", "py4dstem_transformer.benchmarks.pyxem_matching", peaks_path, out_path],
                      out_path, f"pyxem failed on {peaks_path}")


def compare_file(peaks_path: str, quantem_path: str, pyxem_path: Optional[str] = None) -> dict:
    """One condition's figures: quantem's (strict, flip, median, AUC, patterns/s) and the pattern-by-pattern
    differences ours − quantem (all patterns) and ACOM − quantem (the patterns ACOM mapped)."""
    from ..evaluation.compare import paired_accuracy, roc_auc

    z, q = np.load(peaks_path), np.load(quantem_path)
    strict = errors_deg(q["matrix"], z["matrix"], z["symmetry"])
    flip = errors_deg(q["matrix"], z["matrix"], z["symmetry"], allow_beam_flip=True)
    n, m = len(strict), len(z["acom_errors"])
    ours = np.asarray(z["ours_errors"])
    reliability = np.nan_to_num(np.asarray(q["reliability"], np.float64), nan=-1.0)
    row = {"condition": str(z["condition"]), "label": str(z["label"]), "held_out": bool(z["held_out"]),
           "seed": int(z["seed"]), "n": n, "acom_n": m,
           "quantem": {"strict_5": float(np.mean(strict <= 5)), "flip_5": float(np.mean(flip <= 5)),
                       "median_strict": float(np.median(strict)), "auc": roc_auc(reliability, strict <= 5),
                       "patterns_per_s": n / float(q["match_s"]), "plan_s": float(q["plan_s"]),
                       "no_match": int(np.sum(~np.isfinite(q["matrix"]).all((-1, -2)))),
                       "version": str(q["quantem"]), "errors_strict": strict.tolist()},
           "ours_strict_5": float(np.mean(ours <= 5)),
           "ours_minus_quantem": paired_accuracy(ours, strict)}
    if pyxem_path:
        p = np.load(pyxem_path)
        pflip = errors_deg(p["matrix"], z["matrix"], z["symmetry"], allow_beam_flip=True)
        row["pyxem"] = {"flip_5": float(np.mean(pflip <= 5)), "median_flip": float(np.median(pflip)),
                        "patterns_per_s": n / float(p["match_s"]), "version": str(p["pyxem"]),
                        "errors_flip": pflip.tolist()}
        row["ours_flip_5"] = float(np.mean(np.asarray(z["ours_flip_errors"]) <= 5))
        row["ours_minus_pyxem_flip"] = paired_accuracy(z["ours_flip_errors"], pflip)
        if m:
            row["acom_flip_5"] = float(np.mean(z["acom_flip_errors"] <= 5))
            row["acom_minus_pyxem_flip"] = paired_accuracy(z["acom_flip_errors"], pflip[:m])
    if m:
        row["acom_strict_5"] = float(np.mean(z["acom_errors"] <= 5))
        row["ours_minus_acom"] = paired_accuracy(ours[:m], z["acom_errors"])
        row["acom_minus_quantem"] = paired_accuracy(z["acom_errors"], strict[:m])
    return row


def _paired(p: Optional[dict]) -> str:
    if not p:
        return "–"
    return f"{100 * p['difference']:+.1f} ± {100 * p['standard_error']:.1f} ({p['a_only']} / {p['b_only']})"


def _percent(row: dict, key: str) -> str:
    return f"{100 * row[key]:.1f}%" if key in row else "–"


def _name(row: dict) -> str:
    return f"{row['label']}{' (held out)' if row['held_out'] else ''} | {row['seed']}"


def markdown_table(rows: Sequence[dict]) -> str:
    """One line per condition and seed: ours, ACOM, quantem strict within 5 deg on the same patterns; quantem's flip,
    median, AUC, patterns/s; ours − quantem and ACOM − quantem pattern by pattern (points ± standard error,
    only the first / only the second). With pyxem, a second table with the beam flip allowed."""
    lines = ["| condition | seed | n (ACOM) | ours ≤5° strict | ACOM ≤5° strict | quantem ≤5° strict | quantem ≤5° flip "
             "| quantem median | quantem AUC | quantem patterns/s | ours − quantem | ACOM − quantem |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["quantem"]
        lines.append(f"| {_name(r)} | {r['n']} ({r['acom_n']}) | {_percent(r, 'ours_strict_5')} "
                     f"| {_percent(r, 'acom_strict_5')} | {_percent(q, 'strict_5')} | {_percent(q, 'flip_5')} "
                     f"| {q['median_strict']:.2f}° | {q['auc']:.2f} | {q['patterns_per_s']:.0f} "
                     f"| {_paired(r['ours_minus_quantem'])} | {_paired(r.get('acom_minus_quantem'))} |")
    with_pyxem = [r for r in rows if "pyxem" in r]
    if with_pyxem:
        lines += ["", "With the beam flip allowed (pyxem may answer the beam flip):", "",
                  "| condition | seed | ours ≤5° flip | ACOM ≤5° flip | pyxem ≤5° flip | pyxem median (flip) "
                  "| pyxem patterns/s | ours − pyxem | ACOM − pyxem |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {_name(r)} | {_percent(r, 'ours_flip_5')} | {_percent(r, 'acom_flip_5')} "
                  f"| {_percent(r['pyxem'], 'flip_5')} | {r['pyxem']['median_flip']:.2f}° "
                  f"| {r['pyxem']['patterns_per_s']:.0f} | {_paired(r['ours_minus_pyxem_flip'])} "
                  f"| {_paired(r.get('acom_minus_pyxem_flip'))} |" for r in with_pyxem]
    return "\n".join(lines)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peaks", nargs="+", help="files written by robustness --export-peaks")
    parser.add_argument("--quantem-python", default=None,
                        help="Python of an environment with quantem (numpy >= 2); without it only existing "
                             "<name>.quantem.npz results are read")
    parser.add_argument("--pyxem", action="store_true",
                        help="also pyxem's template matching (pyxem 0.21 in this environment), flip allowed")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    rows = []
    for path in (p for p in args.peaks if not p.endswith((".quantem.npz", ".pyxem.npz"))):  # a glob brings results too
        out = run_quantem(path, args.quantem_python) if args.quantem_python else result_path(path, "quantem")
        if not os.path.exists(out):
            raise FileNotFoundError(f"no quantem result {out}: pass --quantem-python PATH (quantem's environment)")
        rows.append(compare_file(path, out, run_pyxem(path) if args.pyxem else None))
    order = {c.name: i for i, c in enumerate(CONDITIONS)}  # robustness' order, the held-out ones last
    rows.sort(key=lambda r: (r["held_out"], order.get(r["condition"], len(order)), r["seed"]))
    print(markdown_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
