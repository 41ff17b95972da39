"""Benchmark: peak memory of mapping a large scan (default 1024 x 1024, 40 disks per position).

``python -m py4dstem_transformer.benchmarks.memory [--size 1024] [--disks 40] [--sources file,braggvectors,peaks]
[--no-refine] [--json FILE]``

Each source is mapped with the shipped Cu model in a fresh interpreter, so that each peak is its own:

* ``file``: the scan as a py4DSTEM file (``py4DSTEM.save`` of its ``BraggVectors``, written first by
  another interpreter), read with :func:`~py4dstem_transformer.io.peaks.read_peaks` and mapped
  (``mapper.match_peaks``): what a big scan should go through;
* ``braggvectors``: the scan as an in-memory py4DSTEM ``BraggVectors`` (1 PointList per position), mapped
  with ``mapper.match_orientations``, as from ``datacube.find_Bragg_disks``;
* ``peaks``: the flat peaks alone, already in memory (the mapping's own share).

Memory is that of the whole process tree, the mapping's worker processes included: the sum of their
proportional set sizes (Linux ``/proc/PID/smaps_rollup``: a page shared by n processes counts 1/n in each,
so the sum counts the physical memory once), sampled every 0.2 s. The peaks are synthetic (:func:`.tokens.synthetic_peaks`): memory
does not depend on what they are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SOURCES = ("file", "braggvectors", "peaks")


def _memory_gb(pid: int) -> float:
    """Proportional set size (GB) of process ``pid``: its private pages plus its share of the pages it shares
    (a forked worker shares the parent's peaks and model), so that summed over processes each page counts
    once; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out + [g for c in out for g in _children(c)]


class TreePeak:
    """The largest memory (GB, summed proportional set sizes) of this process and its descendants, sampled every
    ``interval`` s."""

    def __init__(self, interval: float = 0.2):
        self.peak, self._interval, self._stop = 0.0, interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        me = os.getpid()
        return _memory_gb(me) + sum(_memory_gb(c) for c in _children(me))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self._interval)

    def __enter__(self) -> "TreePeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def _child(source: str, size: int, disks: int, refine: bool, path: str) -> dict:
    """Map one source in this (fresh) interpreter; the figures as a dict."""
    from ..io.peaks import peaks_to_braggvectors, read_peaks
    from ..mapping.mapper import TransformerOrientationMap
    from .tokens import synthetic_peaks

    with TreePeak() as tree:
        mapper = TransformerOrientationMap.pretrained("Cu")
        base = tree.now()
        t0 = time.perf_counter()
        if source == "file":
            data = read_peaks(path)
        elif source == "braggvectors":
            peaks = synthetic_peaks(size, disks)
            data = peaks_to_braggvectors(peaks)
            del peaks
        else:
            data = synthetic_peaks(size, disks)
        loaded, load_s = tree.now(), time.perf_counter() - t0
        t0 = time.perf_counter()
        mapper.match_orientations(data, progress_bar=False, refine=refine)
        map_s = time.perf_counter() - t0
    return {"source": source, "base_gb": base, "data_gb": loaded - base, "peak_gb": tree.peak, "load_s": load_s,
            "map_s": map_s, "patterns_per_s": size * size / map_s}


def _write_file(size: int, disks: int, path: str) -> float:
    """Seconds to write the synthetic scan as a py4DSTEM file at ``path``."""
    import py4DSTEM

    from ..io.peaks import peaks_to_braggvectors
    from .tokens import synthetic_peaks

    t0 = time.perf_counter()
    py4DSTEM.save(path, peaks_to_braggvectors(synthetic_peaks(size, disks)), mode="o")
    return time.perf_counter() - t0


def _run(args: list) -> dict:
    out = subprocess.run([sys.executable, "-m", "py4dstem_transformer.benchmarks.memory", *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--disks", type=int, default=40)
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, of {SOURCES}")
    parser.add_argument("--no-refine", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: map one source here
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    common = ["--size", str(args.size), "--disks", str(args.disks)] + (["--no-refine"] if args.no_refine else [])
    if args.write:
        print(json.dumps({"write_s": _write_file(args.size, args.disks, args.path)}))
        return {}
    if args.child:
        result = _child(args.child, args.size, args.disks, not args.no_refine, args.path)
        print(json.dumps(result))
        return result
    sources = [s for s in args.sources.split(",") if s]
    if set(sources) - set(SOURCES):
        parser.error(f"--sources takes {SOURCES}, got {sources}")
    report = {"size": args.size, "disks": args.disks, "refine": not args.no_refine, "sources": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "scan.h5")
        if "file" in sources:
            report["write_s"] = _run(common + ["--write", "--path", path])["write_s"]
        for source in sources:
            r = report["sources"][source] = _run(common + ["--child", source, "--path", path])
            print(f"{source:>12}: {args.size}² x {args.disks} disks: imports + model {r['base_gb']:.2f} GB, data "
                  f"+{r['data_gb']:.2f} GB ({r['load_s']:.0f} s), peak {r['peak_gb']:.2f} GB (process tree, PSS); "
                  f"mapped in {r['map_s']:.0f} s ({r['patterns_per_s']:,.0f} patterns/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
