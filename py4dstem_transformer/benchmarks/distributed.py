"""Benchmark: a scan mapped from its file in one process, with ``workers=`` and on Dask clusters.

``python -m py4dstem_transformer.benchmarks.distributed [--size 1024] [--workers 1,2] [--chunk 16384]
[--file PATH] [--json FILE]``

The scan: a simulated Cu polycrystal (:func:`~py4dstem_transformer.simulation.scan.simulate_scan`, one
grain per 256 positions), written with ``py4DSTEM.save`` by a separate interpreter (so that this one
never holds it; ``--file`` reuses a file). It is mapped from the file with the shipped Cu model:

- ``one process``: ``mapper.match_orientations(path)`` with ``workers=1`` (the reference map);
- ``workers=n``: the default on a CPU (n = torch's threads, at most 8): a Dask ``LocalCluster`` of n forked
  processes started and closed by the call (:mod:`~py4dstem_transformer.mapping.local_cluster`), its
  start included in the time;
- ``Dask, n workers``: ``mapper.match_orientations(path, client=client)`` on a user's
  ``LocalCluster(n_workers=n, threads_per_worker=1)`` with the workers' sampling profiler off
  (``distributed.worker.profile.enabled: False``, as docs/distributed.md recommends), started before
  the clock; each worker reads its own chunks from the file.

Printed: wall time and patterns/s of each, the scaling efficiency of n Dask workers against one
(``t_1 / (n t_n)``), the peak resident memory of each Dask worker and of this process (``ru_maxrss``),
and how many positions of each map are the one-process map's (symmetry-reduced angle <= 0.01 deg;
other chunks batch differently, so a near-tie between a candidate and its beam-flip partner can fall
the other way at a few positions).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

__all__ = ["write_scan", "main"]


def write_scan(path: str, size: int, seed: int = 0) -> float:
    """Simulate an N x N Cu scan and ``py4DSTEM.save`` it to ``path``; returns the seconds taken."""
    import py4DSTEM

    from ..simulation.scan import simulate_scan
    from ..simulation.simulate import example_crystal
    from .bench import grains_for

    t0 = time.perf_counter()
    bragg, _ = simulate_scan([example_crystal("Cu")], scan_shape=(size, size), num_grains=grains_for(size), seed=seed,
                             progress_bar=False)
    py4DSTEM.save(path, bragg, mode="o")
    return time.perf_counter() - t0


def _agreement(om, reference, symmetry) -> dict:
    from ..evaluation.compare import misorientation_deg

    angle = misorientation_deg(om.matrix[:, :, 0], reference.matrix[:, :, 0], symmetry)
    return {"same_within_0.01deg": float((angle <= 0.01).mean()), "differ_over_1deg": int((angle > 1).sum()),
            "max_corr_difference": float(np.abs(om.corr - reference.corr).max())}


def _agreement_text(row: dict) -> str:
    return (f"against the one-process map: {row['same_within_0.01deg']:.4%} of positions within 0.01 deg, "
            f"{row['differ_over_1deg']} over 1 deg")


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB


def main(argv=None) -> dict:
    from distributed import Client, LocalCluster

    import dask
    import torch

    from ..core.device import environment_info
    from ..mapping.local_cluster import resolve_workers
    from ..mapping.mapper import TransformerOrientationMap

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="scan positions per side")
    parser.add_argument("--workers", default="1,2", help="Dask worker counts, comma separated (1 thread each)")
    parser.add_argument("--chunk", type=int, default=16384, help="positions per chunk (task)")
    parser.add_argument("--file", default=None, help="an existing py4DSTEM file to map (else one is simulated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    out = {"environment": environment_info(), "size": args.size, "chunk": args.chunk, "runs": {}}
    tmp = None
    path = args.file
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = os.path.join(tmp.name, "scan.h5")
        code = ("import sys; from py4dstem_transformer.benchmarks.distributed import write_scan; "
                f"print(write_scan({path!r}, {args.size}, {args.seed}))")
        out["write_s"] = float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                              text=True).stdout.split()[-1])
        print(f"{args.size} x {args.size} scan simulated and saved in {out['write_s']:.0f} s "
              f"({os.path.getsize(path) / 2**20:.0f} MB)")
    n = int(args.size) ** 2
    mapper = TransformerOrientationMap.pretrained("Cu", workers=1)
    try:
        t0 = time.perf_counter()
        reference = mapper.match_orientations(path, progress_bar=False, chunk_size=args.chunk)
        t = time.perf_counter() - t0
        out["runs"]["one process"] = {"seconds": t, "patterns_per_s": n / t}
        print(f"one process (workers=1): {t:.1f} s, {n / t:.0f} patterns/s")
        default = resolve_workers(None, torch.device("cpu"), n)
        if default > 1:
            local = TransformerOrientationMap.pretrained("Cu")  # workers=None: the default
            t0 = time.perf_counter()
            om = local.match_orientations(path, progress_bar=False, chunk_size=args.chunk)
            t = time.perf_counter() - t0
            row = {"seconds": t, "patterns_per_s": n / t, **_agreement(om, reference, mapper.symmetry)}
            out["runs"][f"workers={default}"] = row
            print(f"workers={default} (the default: a LocalCluster for the call, its start included): {t:.1f} s, "
                  f"{n / t:.0f} patterns/s; {_agreement_text(row)}")
        for w in (int(v) for v in args.workers.split(",")):
            with dask.config.set({"distributed.worker.profile.enabled": False}), \
                    LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                client.run(lambda: __import__("torch").ones(1))  # workers started and torch imported before the clock
                t0 = time.perf_counter()
                om = mapper.match_orientations(path, progress_bar=False, chunk_size=args.chunk, client=client)
                t = time.perf_counter() - t0
                rss = client.run(_peak_rss_gb)
            row = {"seconds": t, "patterns_per_s": n / t, "worker_peak_gb": sorted(rss.values()),
                   **_agreement(om, reference, mapper.symmetry)}
            out["runs"][f"Dask, {w} worker{'s' if w > 1 else ''}"] = row
            print(f"Dask, {w} x 1 thread: {t:.1f} s, {n / t:.0f} patterns/s; worker peak memory "
                  f"{', '.join(f'{g:.2f}' for g in row['worker_peak_gb'])} GB; {_agreement_text(row)}")
        dask_runs = {int(k.split(",")[1].split()[0]): v for k, v in out["runs"].items() if k.startswith("Dask")}
        if 1 in dask_runs:
            for w, row in dask_runs.items():
                if w > 1:
                    row["efficiency"] = dask_runs[1]["seconds"] / (w * row["seconds"])
                    print(f"scaling, 1 -> {w} workers: {dask_runs[1]['seconds'] / row['seconds']:.2f}x faster, "
                          f"efficiency {row['efficiency']:.0%}")
        out["caller_peak_gb"] = _peak_rss_gb()
        print(f"this process's peak memory: {out['caller_peak_gb']:.2f} GB (the map's arrays and the model; "
              "the peaks stay in the file)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out


if __name__ == "__main__":
    main()
