"""Benchmark: simulated training sets (kinematic and Bloch-wave, Cu and Cu2O).

``python -m py4dstem_transformer.benchmarks.simulation [--n-jobs 2] [--out DIR]``

Figures printed:

* patterns/s for each crystal and simulation kind with the issue's defaults: dynamical = the
  2-degree grid ('auto', 406 beam directions for m-3m) x 80 thicknesses; kinematic = a 0.5-degree
  grid (6105 directions, one pattern each: kinematic patterns do not depend on thickness);
* the reference run, Cu at 300 kV, 406 directions x 80 thicknesses, dynamical, with ``--n-jobs``
  processes: wall time, set size, file size and load time.

Files go to a temporary folder unless ``--out`` names one to keep them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from ..simulation.simulate import generate_training_set
from ..simulation.simulator import example_crystal
from ..simulation.training_set import TrainingSet


def run(crystal_name: str, dynamical: bool, n_jobs: int, angle_step: float):
    start = time.perf_counter()
    ts = generate_training_set(example_crystal(crystal_name), dynamical=dynamical, n_jobs=n_jobs,
                               angle_step_zone_axis=angle_step, progress_bar=False)
    return ts, time.perf_counter() - start


def throughput_table(n_jobs: int) -> None:
    print(f"{'crystal':<6} {'kind':<9} {'directions':>10} {'patterns':>9} {'disks':>9} {'mean':>5} "
          f"{'seconds':>8} {'patterns/s':>11}")
    for name in ("Cu", "Cu2O"):
        for dynamical, step in ((False, 0.5), (True, 2.0)):
            ts, seconds = run(name, dynamical, n_jobs, step)
            kind = "dynamical" if dynamical else "kinematic"
            simulated = ts.info["num_simulated"]
            print(f"{name:<6} {kind:<9} {len(ts.zone_axes):>10} {simulated:>9} {len(ts.qx):>9} "
                  f"{ts.counts.mean():>5.1f} {seconds:>8.2f} {simulated / seconds:>11.0f}")


def reference_run(n_jobs: int, folder: str) -> None:
    ts, seconds = run("Cu", True, n_jobs, 2.0)
    path = os.path.join(folder, "cu_406x80_dynamical.h5")
    ts.save(path, overwrite=True)
    start = time.perf_counter()
    back = TrainingSet.load(path)
    load = time.perf_counter() - start
    dropped = {k: ts.info[f"dropped_{k}"] for k in ("empty", "collinear", "duplicate")}
    print(f"\nCu 300 kV, {len(ts.zone_axes)} directions x {len(ts.config.thickness)} thicknesses, dynamical, "
          f"n_jobs={n_jobs}: {seconds:.1f} s ({ts.info['num_simulated'] / seconds:.0f} patterns/s)")
    print(f"  {len(ts)} patterns stored (dropped {dropped}), {len(ts.qx)} disks "
          f"(mean {ts.counts.mean():.1f}, max {ts.counts.max()} per pattern)")
    print(f"  file {path}: {os.path.getsize(path) / 1e6:.1f} MB; TrainingSet.load {load:.2f} s "
          f"({len(back.qx) / load / 1e6:.1f} M disks/s)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--out", help="keep the reference training set in this folder")
    parser.add_argument("--skip-table", action="store_true", help="only the reference run")
    args = parser.parse_args(argv)
    print(f"cpu cores: {os.cpu_count()}, n_jobs: {args.n_jobs}")
    run("Cu", True, 1, 30.0)  # warm-up: imports py4DSTEM, spglib, emdfile outside the timings
    if not args.skip_table:
        throughput_table(args.n_jobs)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        reference_run(args.n_jobs, args.out)
    else:
        with tempfile.TemporaryDirectory() as folder:
            reference_run(args.n_jobs, folder)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
