"""Benchmark: peak memory of mapping a large scan (default 1024 x 1024, 40 disks per position).

``python -m py4dstem_transformer.benchmarks.memory [--size 1024] [--disks 40] [--no-refine]``

Maps flat peaks (what :func:`~py4dstem_transformer.io.peaks.read_peaks` returns for a file) with the
shipped Cu model and prints the process's resident memory before and at its peak (Linux
``/proc/self/status``). The peaks are synthetic (:func:`.tokens.synthetic_peaks`); memory does not
depend on what they are.
"""

from __future__ import annotations

import argparse
import time


def _status_gb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1e6
    return float("nan")


def main(argv=None) -> dict:
    from ..mapping.mapper import TransformerOrientationMap
    from .tokens import synthetic_peaks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--disks", type=int, default=40)
    parser.add_argument("--no-refine", action="store_true")
    args = parser.parse_args(argv)
    mapper = TransformerOrientationMap.pretrained("Cu")
    base = _status_gb("VmRSS")
    peaks = synthetic_peaks(args.size, args.disks)
    loaded = _status_gb("VmRSS")
    t0 = time.perf_counter()
    mapper.match_peaks(peaks, progress_bar=False, refine=not args.no_refine)
    seconds = time.perf_counter() - t0
    peak = _status_gb("VmHWM")
    n = args.size**2
    print(f"{n} patterns x {args.disks} disks: imports + model {base:.2f} GB, flat peaks +{loaded - base:.2f} GB, "
          f"mapping +{peak - loaded:.2f} GB; peak resident {peak:.2f} GB; {seconds:.0f} s ({n / seconds:,.0f} patterns/s)")
    return {"base_gb": base, "peaks_gb": loaded - base, "mapping_gb": peak - loaded, "peak_gb": peak}


if __name__ == "__main__":
    main()
