"""``py4dstem-transformer bench``: py4DSTEM's ACOM and the transformer side by side on the same scans.

For every scan size N, one simulated Cu polycrystal (:func:`~py4dstem_transformer.simulation.scan.simulate_scan`:
Voronoi grains with random orientations, Bloch-wave patterns 20-500 A thick, one-pixel vacuum grain
boundaries, raw detector pixels with a drifting origin) goes as the same in-memory ``BraggVectors``
to both methods:

* the transformer: a fresh mapper (model file load + reflection list = "setup"), then
  ``match_orientations`` end to end; a second, staged run gives the time of each stage
  (:mod:`.stages`);
* ACOM: a fresh crystal, ``orientation_plan`` (default plan, timed as "plan"), then
  ``match_orientations`` on every position, or on ``acom_max`` random positions and **extrapolated**
  per pattern to the scan (flagged in every output);
* pyxem template matching on ACOM's positions, when ``import pyxem`` works (optional extra), and quantem with
  ``quantem_python``: each in a process of its own, timed inside it, so that neither's imports, threads or memory
  stay in the process that times the transformer (pyxem run in it made ours ~1.5x slower there); a position a
  peer leaves without an answer counts as wrong.

Accuracy is measured against the ground truth on crystalline positions (symmetry-reduced, strict and
with the beam flip); the file path (``py4DSTEM.save``, then ``read_peaks`` vs ``py4DSTEM.read``)
from ``file_min_size`` up. Every time is wall-clock (``time.perf_counter``), after a warm-up on a
8 x 8 scan; every ratio compares numbers from the same run. Outputs: :mod:`.bench_report`,
:mod:`.bench_plots`.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Optional, Tuple

import numpy as np

from ..core.defaults import ACCEL_VOLTAGE
from .common import load_mapper, random_positions, subset_braggvectors, timed

__all__ = ["BenchConfig", "run_bench", "run_and_write", "write_outputs", "grains_for", "DEFAULT_SIZES"]

DEFAULT_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures.

    sizes : scan sides N (scans are N x N).
    acom_max : ACOM (and pyxem) run on at most this many positions per scan; beyond, a random
        subset, extrapolated per pattern.
    grains : Voronoi grains per scan; None: :func:`grains_for`.
    file_min_size : the file path is measured for N >= this (None: never).
    threads : torch threads for the transformer (None: torch's default).
    quantem_python : the Python of an environment with quantem (it needs numpy >= 2): quantem maps ACOM's
        positions there too (:mod:`.peers`), its plan and matching timed inside it (None: skipped).
    """

    sizes: Tuple[int, ...] = DEFAULT_SIZES
    acom_max: int = 500
    model: str = "Cu"
    device: Optional[str] = None
    precision: Optional[str] = None
    grains: Optional[int] = None
    file_min_size: Optional[int] = 256
    refine: bool = True
    threads: Optional[int] = None
    seed: int = 0
    progress_bar: bool = True
    quantem_python: Optional[str] = None


def grains_for(size: int) -> int:
    """Voronoi grains for an N x N scan: one per 256 positions (16 x 16 px on average), 4 to 1024."""
    return int(np.clip(size * size // 256, 4, 1024))


def run_bench(config: BenchConfig, log=print) -> Tuple[dict, dict]:
    """Run every size; returns ``(report, raw)``. Sets torch's thread count when ``config.threads``.

    ``report`` holds every figure (JSON-ready); ``raw`` holds per-position errors per method
    (``raw["errors"][method]`` = list of dicts with ``errors_strict``, ``errors_flip``, ``corr``)
    and the maps of one scan (``raw["maps"]``) for the plots.
    """
    import torch

    from .pyxem_matching import pyxem_missing

    if config.threads:
        torch.set_num_threads(config.threads)
    pyxem_skip = pyxem_missing()
    _warm_up(config)
    map_size = max([s for s in config.sizes if s * s <= config.acom_max], default=min(config.sizes))
    report = {"machine": machine_info(config), "settings": asdict(config), "sizes": [], "pyxem": _pyxem_note(pyxem_skip),
              "quantem": ("its plan, matching and refinement (`benchmarks/quantem_acom.py`) in its own environment "
                          f"({config.quantem_python}) on ACOM's positions" if config.quantem_python else
                          "not run (`--quantem-python PATH` adds it)")}
    raw = {"errors": {}, "maps": None}
    for i, size in enumerate(config.sizes):
        row, accuracy, maps = bench_size(config, size, config.seed + i, pyxem=pyxem_skip is None,
                                         keep_maps=size == map_size)
        for method, a in accuracy.items():  # per-position arrays go to raw, summaries stay in the row
            raw["errors"].setdefault(method, []).append({k: a.pop(k) for k in _PER_POSITION if k in a})
        row["accuracy"] = accuracy
        report["sizes"].append(row)
        raw["maps"] = maps or raw["maps"]
        log(_summary_line(row))
    report["accuracy_pooled"] = pooled_accuracy(raw["errors"])
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    return report, raw


_PER_POSITION = ("errors_strict", "errors_flip", "corr")


def _pyxem_note(skip: Optional[str]) -> str:
    if skip:
        return f"skipped, `import pyxem` failed ({skip}); `pip install pyxem` adds it as a third method"
    return "template matching (`benchmarks/pyxem_matching.py`) on ACOM's positions"


def bench_size(config: BenchConfig, size: int, seed: int, pyxem: bool = False, keep_maps: bool = False):
    """One N x N scan through every method: ``(row, accuracy per method, maps or None)``."""
    from ..simulation.scan import simulate_scan

    grains = config.grains or grains_for(size)
    (bragg, truth), simulate_s = timed(simulate_scan, [_crystal(config)], scan_shape=(size, size), num_grains=grains,
                                       seed=seed, progress_bar=config.progress_bar)
    n = size * size
    row = {"size": size, "patterns": n, "grains": grains, "crystalline": int((truth.phase >= 0).sum()),
           "simulate_s": simulate_s}
    row["transformer"], mapper, om = _run_transformer(config, bragg)
    pick = np.arange(n) if n <= config.acom_max else random_positions(n, config.acom_max, seed)
    row["acom"], om_acom = _run_acom(config, bragg, pick)
    accuracy = _accuracy(om, om_acom, truth, pick, mapper.symmetry)
    if pyxem:
        row["pyxem"], accuracy["pyxem"] = _run_pyxem(config, bragg, pick, truth, mapper.symmetry)
    if config.quantem_python:
        row["quantem"], accuracy["quantem"] = _run_quantem(config, bragg, pick, truth, mapper.symmetry)
    if config.file_min_size is not None and size >= config.file_min_size:
        row["file"] = _run_file(config, bragg, mapper, om, row["acom"])
    maps = _maps(mapper, truth, om, om_acom, pick, size) if keep_maps else None
    return row, {k: _accuracy_row(v) for k, v in accuracy.items()}, maps


def _accuracy(om, om_acom, truth, pick: np.ndarray, symmetry) -> dict:
    """Each method against the truth on crystalline positions: the transformer on all of them and on
    ACOM's, ACOM on its own (``om_acom`` holds exactly the positions ``pick``)."""
    from ..evaluation.compare import evaluate_orientation_map

    crystalline = truth.phase >= 0
    truth_at, mask_at = _truth_at(truth, pick)
    return {"transformer": evaluate_orientation_map(om, truth.orientation_matrices, symmetry, crystalline),
            "transformer (ACOM's positions)": evaluate_orientation_map(_positions(om, pick), truth_at, symmetry, mask_at),
            "ACOM": evaluate_orientation_map(_positions(om_acom), truth_at, symmetry, mask_at)}


def _truth_at(truth, pick: np.ndarray):
    """(1, n, 3, 3) true matrices and (1, n) crystalline mask at the flat positions ``pick``."""
    return truth.orientation_matrices.reshape(-1, 3, 3)[pick][None], (truth.phase >= 0).reshape(-1)[pick][None]


def _crystal(config: BenchConfig):
    """A fresh py4DSTEM Crystal of the model's material (nothing computed on it yet)."""
    from ..core.crystal import crystal_from_metadata

    return crystal_from_metadata(_model_metadata(config.model))


@functools.lru_cache(maxsize=None)
def _model_metadata(model: str) -> dict:
    return load_mapper(model).model.metadata


def _run_transformer(config: BenchConfig, bragg):
    """Setup (fresh mapper: model file + reflections), end-to-end map, then a staged run for the stages."""
    from .stages import staged_transformer_map

    mapper, load_s = timed(load_mapper, config.model, config.device, config.precision)
    _, reflections_s = timed(lambda: mapper.phases)  # the per-phase physics: reflections, symmetry
    om, match_s = timed(mapper.match_orientations, bragg, progress_bar=config.progress_bar, refine=config.refine)
    _, stages = staged_transformer_map(mapper, bragg, config.refine)
    n = int(np.prod(bragg.Rshape))
    total = load_s + reflections_s + match_s
    row = {"setup_s": load_s + reflections_s, "match_s": match_s, "total_s": total, "patterns_per_s": n / total,
           "stages_s": stages, "stages_sum_s": sum(stages.values())}
    return row, mapper, om


def _run_acom(config: BenchConfig, bragg, pick: np.ndarray):
    """ACOM with its default plan on the positions ``pick``; extrapolated per pattern to the whole scan."""
    from ..evaluation.compare import acom_match, acom_plan

    n = int(np.prod(bragg.Rshape))
    extrapolated = len(pick) < n
    crystal = _crystal(config)
    _, plan_s = timed(acom_plan, crystal)
    subset = subset_braggvectors(bragg, pick) if extrapolated else bragg
    om, match_s = timed(acom_match, crystal, subset, config.progress_bar)
    basis = f"extrapolated from {len(pick)} of {n} random positions" if extrapolated else f"all {n} positions"
    return {"plan_s": plan_s, **_extrapolated(plan_s, match_s, len(pick), n), "basis": basis}, om


def _run_pyxem(config: BenchConfig, bragg, pick, truth, symmetry):
    """pyxem on ACOM's positions, in a process of its own (:func:`~.peers.run_pyxem_apart`: pyxem's imports, threads
    and memory stay out of the process that times ours); its library and matching timed inside it. (speed row,
    accuracy); a failure is reported, not raised."""
    from ..evaluation.compare import evaluate_orientation_map
    from .peers import run_pyxem_apart

    n = int(np.prod(bragg.Rshape))
    result = _peer_answers(config, bragg, pick, run_pyxem_apart, k_max=2.0)  # pyxem's templates and polar range
    if "failed" in result:
        return result, {}
    found = SimpleNamespace(matrix=result["matrix"][None, :, None], corr=np.ones((1, len(pick), 1)))
    truth_at, mask_at = _truth_at(truth, pick)
    accuracy = evaluate_orientation_map(found, truth_at, symmetry, mask_at)
    accuracy["corr_auc"] = None  # no confidence taken from pyxem
    library_s, call_s = float(result["library_s"]), float(result["call_s"])
    # a call's own cost (whatever its size) goes with the library, once; the rest is per pattern
    row = _extrapolated(library_s + call_s, max(float(result["match_s"]) - call_s, 0.0), len(pick), n)
    return {"library_s": library_s, "call_s": call_s, **row, "version": str(result["pyxem"])}, accuracy


def _extrapolated(setup_s: float, match_s: float, matched: int, n: int) -> dict:
    """The speed row of ACOM or a peer on a scan of ``n`` positions: ``setup_s`` once (its plan or library), then
    ``match_s`` measured on ``matched`` positions, extrapolated per pattern to all ``n``."""
    per_pattern = match_s / matched
    total = setup_s + per_pattern * n
    return {"match_s_measured": match_s, "positions_matched": matched, "extrapolated": matched < n,
            "s_per_pattern": per_pattern, "total_s": total, "patterns_per_s": n / total}


def _run_quantem(config: BenchConfig, bragg, pick, truth, symmetry):
    """quantem (its own environment, :mod:`.peers`) on ACOM's positions: (speed row, accuracy, its ``reliability``
    as the confidence); a failure is reported, not raised. Its plan and matching + refinement are timed inside its
    process (start-up and file writing not counted), extrapolated per pattern like ACOM's."""
    from ..evaluation.compare import evaluate_orientation_map
    from .peers import run_quantem

    n = int(np.prod(bragg.Rshape))
    result = _peer_answers(config, bragg, pick, lambda peaks: run_quantem(peaks, config.quantem_python))
    if "failed" in result:
        return result, {}
    none = ~np.isfinite(result["matrix"]).all((-1, -2))  # no match: wrong (180 deg), as in benchmarks.peers
    matrices = np.where(none[:, None, None], np.eye(3), result["matrix"])
    reliability = np.nan_to_num(result["reliability"], nan=-1.0)
    found = SimpleNamespace(matrix=matrices[None, :, None], corr=reliability[None, :, None])
    truth_at, mask_at = _truth_at(truth, pick)
    accuracy = _none_wrong(evaluate_orientation_map(found, truth_at, symmetry, mask_at), none[mask_at[0]])
    plan_s = float(result["plan_s"])
    return {"plan_s": plan_s, **_extrapolated(plan_s, float(result["match_s"]), len(pick), n),
            "no_match": int(none.sum()), "version": str(result["quantem"])}, accuracy


def _peer_answers(config: BenchConfig, bragg, pick, run, **write) -> dict:
    """A peer's answers on ACOM's positions ``pick``: their peaks written to a temporary file
    (:func:`~.peers.write_peaks` with ``write``), ``run(peaks_path) -> result path`` (a process of its own), the
    result's arrays; ``{"failed": ...}`` where the peer failed (an optional third party: its failure is reported in
    the outputs and the benchmark goes on)."""
    from .peers import write_peaks

    subset = subset_braggvectors(bragg, pick) if len(pick) < int(np.prod(bragg.Rshape)) else bragg
    with tempfile.TemporaryDirectory() as folder:
        peaks = os.path.join(folder, "peaks.npz")
        write_peaks(peaks, subset, _crystal(config), ACCEL_VOLTAGE, **write)
        try:
            return dict(np.load(run(peaks)))
        except Exception as err:  # noqa: BLE001 - whatever the peer raised, named in the row
            return {"failed": f"{type(err).__name__}: {err}"}


def _none_wrong(evaluation: dict, none: np.ndarray) -> dict:
    """``evaluation`` (:func:`~..evaluation.compare.evaluate_orientation_map`'s, on the evaluated positions) with the
    positions ``none`` (no answer) 180 deg off, strict and flip allowed, its summaries and AUC taken again."""
    from ..evaluation.compare import roc_auc, summarize_errors

    out = dict(evaluation)
    for kind in ("strict", "flip"):
        errors = np.where(none, 180.0, np.asarray(evaluation[f"errors_{kind}"], float))
        out[f"errors_{kind}"], out[kind] = errors, summarize_errors(errors)
    out["corr_auc"] = roc_auc(out["corr"], out["errors_strict"] < 5.0)
    return out


def _run_file(config: BenchConfig, bragg, mapper, om_memory, acom_row: dict) -> dict:
    """``py4DSTEM.save`` the scan, then map it from disk: ``read_peaks`` vs ``py4DSTEM.read``."""
    import contextlib
    import io

    import py4DSTEM

    from ..io.peaks import read_peaks

    quiet = contextlib.redirect_stderr(io.StringIO()) if not config.progress_bar else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as folder, quiet:
        path = os.path.join(folder, "scan.h5")
        _, save_s = timed(py4DSTEM.save, path, bragg, mode="o")
        file_mb = os.path.getsize(path) / 1e6
        peaks, fast_read_s = timed(read_peaks, path)
        om_fast, fast_map_s = timed(mapper.match_peaks, peaks, progress_bar=config.progress_bar, refine=config.refine)
        del peaks
        read_back, slow_read_s = timed(py4DSTEM.read, path)
        om_slow, slow_map_s = timed(mapper.match_orientations, read_back, progress_bar=config.progress_bar,
                                    refine=config.refine)
    same = all(np.allclose(o.matrix, om_memory.matrix, atol=1e-6) for o in (om_fast, om_slow))
    return {"save_s": save_s, "file_mb": file_mb, "read_peaks_s": fast_read_s, "read_peaks_map_s": fast_map_s,
            "read_peaks_total_s": fast_read_s + fast_map_s, "py4dstem_read_s": slow_read_s,
            "py4dstem_read_map_s": slow_map_s, "py4dstem_read_total_s": slow_read_s + slow_map_s,
            "maps_match_memory": bool(same),
            "acom_from_file_total_s": slow_read_s + acom_row["total_s"], "acom_extrapolated": acom_row["extrapolated"]}


def _positions(orientation_map, pick: Optional[np.ndarray] = None) -> SimpleNamespace:
    """``matrix`` (1, n, K, 3, 3) and ``corr`` (1, n, K) of the flat positions ``pick`` (None: all)."""
    K = orientation_map.corr.shape[-1]
    matrix, corr = orientation_map.matrix.reshape(1, -1, K, 3, 3), orientation_map.corr.reshape(1, -1, K)
    return SimpleNamespace(matrix=matrix if pick is None else matrix[:, pick], corr=corr if pick is None else corr[:, pick])


def _accuracy_row(evaluation: dict) -> dict:
    keep = ("strict", "flip", "corr_auc", "errors_strict", "errors_flip", "corr")
    return {k: evaluation[k] for k in keep if k in evaluation} if evaluation else {}


def pooled_accuracy(errors: dict) -> dict:
    """Per method, the errors of every scan together: strict and flip summaries and corr ROC AUC."""
    from ..evaluation.compare import roc_auc, summarize_errors

    pooled = {}
    for method, parts in errors.items():
        parts = [p for p in parts if p]
        if not parts:
            continue
        strict, flip, corr = (np.concatenate([p[k] for p in parts]) for k in ("errors_strict", "errors_flip", "corr"))
        auc = None if method == "pyxem" else roc_auc(corr, strict < 5.0)
        pooled[method] = {"strict": summarize_errors(strict), "flip": summarize_errors(flip), "corr_auc": auc}
    return pooled


def _maps(mapper, truth, om, om_acom, pick, size: int) -> dict:
    """The maps the figure shows; ACOM's positions outside ``pick`` are left empty (corr 0)."""
    from ..io.orientation_map import build_orientation_map

    n = size * size
    label = "ACOM" if len(pick) == n else f"ACOM ({len(pick)} of {n} positions)"
    if len(pick) < n:
        matrix, corr = np.tile(np.eye(3), (n, 1, 1, 1)), np.zeros((n, 1))
        matrix[pick], corr[pick] = om_acom.matrix.reshape(-1, 1, 3, 3), om_acom.corr.reshape(-1, 1)
        om_acom = build_orientation_map(mapper.crystal, matrix.reshape(size, size, 1, 3, 3), corr.reshape(size, size, 1),
                                        mapper.symmetry)
    return {"size": size, "mapper": mapper, "truth": truth, "maps": {"transformer": om, label: om_acom}}


def _warm_up(config: BenchConfig) -> None:
    """Both methods once on an 8 x 8 scan of 32 grains, so first-call costs (imports, torch kernels for
    each padded length) stay out of the timings."""
    from ..evaluation.compare import acom_default
    from ..simulation.scan import simulate_scan

    bragg, _ = simulate_scan([_crystal(config)], scan_shape=(8, 8), num_grains=32, seed=12345, vacuum_boundaries=False,
                             progress_bar=False)
    load_mapper(config.model, config.device, config.precision).match_orientations(bragg, progress_bar=False)
    acom_default(_crystal(config), subset_braggvectors(bragg, np.arange(4)))


def machine_info(config: BenchConfig) -> dict:
    """CPU, cores, threads, versions, device and the network's dtype for this run."""
    import datetime

    import torch

    from ..core.device import autocast_dtype, environment_info, resolve_device

    info = environment_info()
    device = resolve_device(config.device)
    dtype = autocast_dtype(device, config.precision)
    info.update(cpu_cores=os.cpu_count(), device=str(device), torch_threads=torch.get_num_threads(),
                dtype="bfloat16 autocast" if dtype is not None else "float32",
                date=datetime.date.today().isoformat(), load_average_start=os.getloadavg()[0])
    return info


def _summary_line(row: dict) -> str:
    t, a = row["transformer"], row["acom"]
    note = " (extrapolated)" if a["extrapolated"] else ""
    return (f"{row['size']}x{row['size']}: transformer {t['total_s']:.2f} s ({t['patterns_per_s']:,.0f} patterns/s), "
            f"ACOM {a['total_s']:.1f} s{note} ({a['patterns_per_s']:,.1f} patterns/s{note}), "
            f"ratio {a['total_s'] / t['total_s']:,.1f}x{note}")


# -- outputs -----------------------------------------------------------------------------------
def write_outputs(report: dict, raw: dict, out, docs: Optional[str] = None) -> dict:
    """``out``/bench.json, bench.md and bench_*.png; with ``docs`` (a benchmarks.md), its bench
    section and ``images/bench_*.png`` beside it too. Returns the paths written."""
    import shutil
    from pathlib import Path

    from .bench_plots import plot_all
    from .bench_report import markdown, update_docs, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(report, out / "bench.json"), "figures": plot_all(report, raw, out)}
    paths["markdown"] = out / "bench.md"
    paths["markdown"].write_text(markdown(report))
    if docs:
        images = Path(docs).parent / "images"
        images.mkdir(exist_ok=True)
        for figure in paths["figures"]:
            shutil.copyfile(figure, images / Path(figure).name)
        paths["docs"] = update_docs(markdown(report, image_prefix="images/"), docs)
    return paths


def run_and_write(config: BenchConfig, out, docs: Optional[str] = None, command: Optional[str] = None) -> dict:
    """:func:`run_bench`, then :func:`write_outputs`; ``command`` (the command line) is quoted in the outputs.

    What ``py4dstem-transformer bench`` runs (its options are parsed in :mod:`py4dstem_transformer.cli`).
    Returns the paths written.
    """
    report, raw = run_bench(config)
    if command is not None:
        report["command"] = command
    return write_outputs(report, raw, out, docs)
