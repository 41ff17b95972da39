"""quantem's orientation matching on peaks exported by ``robustness --export-peaks``: run in quantem's environment.

quantem (py4DSTEM's successor) needs numpy >= 2 and Python >= 3.11, so it cannot share an environment with
py4DSTEM 0.14.18. This file imports nothing of this package (run it by path, with quantem's Python)::

    python -m venv qenv && qenv/bin/pip install torch quantem
    qenv/bin/python py4dstem_transformer/benchmarks/quantem_acom.py peaks.npz quantem.npz

Workflow (quantem 0.1.10, its documented one, defaults throughout): ``OrientationMap.from_vectors(peaks, crystal,
energy_ev, precession_deg)`` -> ``build_plan()`` -> ``match_orientations()`` -> ``refine_orientations(
neighbor_rescue=False)`` (the exported patterns are independent orientations, not a scan's neighbours). The peaks
are the ones ACOM and ours were given (calibrated 1/A, lab frame, direct beam included), the crystal is the
model's. quantem's quaternion ``q`` (scalar first) has ``v_lab = R(q) v_crystal``, so py4DSTEM's matrix is
``M = R(q).T``. Writes ``matrix`` (n, 3, 3; NaN where quantem returned no match), ``corr``, ``reliability`` (its
confidence: best minus second-best correlation), ``plan_s``, ``match_s`` (matching and refinement) and the
versions.
"""

import argparse
import contextlib
import io
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peaks", help="an .npz written by robustness --export-peaks")
    parser.add_argument("out", help=".npz to write")
    args = parser.parse_args(argv)

    import quantem
    import torch
    from ase import Atoms
    from quantem.core.datastructures.vector import Vector
    from quantem.diffraction.crystal import Crystal
    from quantem.diffraction.orientation import OrientationMap
    from quantem.diffraction.rotations import quat_to_matrix

    z = np.load(args.peaks)
    atoms = Atoms(numbers=z["numbers"], scaled_positions=z["positions"], cell=z["cell"], pbc=True)
    with contextlib.redirect_stdout(io.StringIO()):
        crystal = Crystal(atoms, verbose=False)
        crystal.calculate_structure_factors(k_max=float(z["k_max"]))
    off = z["offsets"]
    cells = [np.stack([z["qx"][a:b], z["qy"][a:b], z["intensity"][a:b]], 1) for a, b in zip(off[:-1], off[1:])]
    peaks = Vector.from_data([cells], fields=["qx", "qy", "intensity"], units=["1/A", "1/A", "counts"],
                             dtype=torch.float64)
    precession = float(z["precession_deg"])
    om = OrientationMap.from_vectors(peaks, crystal, energy_ev=float(z["accel_voltage"]), precession_deg=precession)
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        om.build_plan(verbose=False, progress_bar=False)
        t1 = time.perf_counter()
        om.match_orientations(progress_bar=False)
        om.refine_orientations(neighbor_rescue=False, progress_bar=False)
        t2 = time.perf_counter()
    q = om.quats[0, :, 0].to(torch.float64)
    matrix = quat_to_matrix(q / q.norm(dim=-1, keepdim=True)).transpose(-1, -2).numpy()
    none = ~np.isfinite(q.numpy()).all(-1) | (q.norm(dim=-1).numpy() < 0.5)
    if om.computed is not None:
        none |= ~np.asarray(om.computed[0]).astype(bool)
    matrix[none] = np.nan
    np.savez(args.out, matrix=matrix, corr=om.corr[0, :, 0].numpy(), reliability=np.asarray(om.reliability)[0].reshape(len(matrix), -1)[:, 0],
             plan_s=t1 - t0, match_s=t2 - t1, quantem=quantem.__version__, torch=torch.__version__,
             numpy=np.__version__)
    print(f"{args.out}: {len(matrix)} patterns ({int(none.sum())} without a match), plan {t1 - t0:.1f} s, "
          f"match + refine {t2 - t1:.1f} s")


if __name__ == "__main__":
    main()
