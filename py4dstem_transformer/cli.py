"""Command line: ``py4dstem-transformer`` (also ``python -m py4dstem_transformer``).

Every option of every subcommand is parsed here (the library itself never sees argparse). Each
subcommand is an ``_add_*`` function that registers its options in :func:`build_parser` and a small
``_cmd_*`` function that calls the library. :func:`main` raises as the library does (for callers and
tests); :func:`console`, the installed command, turns the errors a user can fix (``ValueError``,
``OSError``: a wrong file, setting or name) into one line on stderr and exit status 1, with
``--traceback`` to see Python's traceback instead; heavy imports happen inside the function that needs them,
so ``--help`` and ``info`` start fast. ``bench`` is the one command that reaches into
:mod:`py4dstem_transformer.benchmarks`, and only inside :func:`_cmd_bench` (nothing in the library
imports the benchmarks).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from ._version import __version__
from .core.defaults import ACCEL_VOLTAGE, K_MAX, K_MAX_MARGIN
from .core.device import environment_info
from .simulation.simulator import DEFAULT_THICKNESS

__all__ = ["main", "console", "build_parser"]


def _cmd_info(args) -> int:
    info = environment_info()
    width = max(map(len, info))
    for key, value in info.items():
        shown = "not installed" if value is None and key in ("pymatgen", "orix", "py4DSTEM") else value
        print(f"{key:<{width}}  {shown}")
    if info["pymatgen"] is None:
        print("\nwarning: pymatgen is missing; py4DSTEM's symmetry features (OrientationMap.family, "
              "in-plane orientation maps) will not work. pip install 'pymatgen<2024.8.9'")
    return 0


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a training set and write it to an HDF5 file",
                       description="Simulate Bragg-disk patterns with orientation labels (py4DSTEM "
                                   "Bloch-wave or kinematic) and write a training set file.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--crystal", choices=["Cu", "Cu2O"], help="a built-in example crystal")
    source.add_argument("--cif", help="crystal structure from a CIF file (needs pymatgen)")
    p.add_argument("--out", required=True, help="output file (.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--accel-voltage", type=float, default=ACCEL_VOLTAGE,
                   help=f"volts (default {ACCEL_VOLTAGE / 1e3:g}e3)")
    p.add_argument("--k-max", type=float, default=K_MAX, help=f"1/A (default {K_MAX:g})")
    p.add_argument("--angle-step", type=float, default=2.0, help="beam-direction grid step, degrees (default 2)")
    p.add_argument("--num-zone-axes", type=int, help="draw this many random beam directions instead of the grid")
    p.add_argument("--thickness", type=_thickness_arg, default=DEFAULT_THICKNESS,
                   help="A: 'start:stop:num' (log-spaced) or 't1,t2,...' (default 10:1000:80)")
    p.add_argument("--num-thicknesses", type=int, help="random thicknesses per beam direction within the range")
    p.add_argument("--kinematic", action="store_true", help="kinematic instead of Bloch-wave intensities")
    p.add_argument("--sigma-excitation-error", type=float, help="1/A (default 0.04 dynamical, 0.02 kinematic)")
    p.add_argument("--precession-angle", type=float, help="degrees (kinematic only)")
    p.add_argument("--min-relative-intensity", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-jobs", type=int, default=1, help="worker processes (-1: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)


def _thickness_arg(text: str) -> tuple:
    """``'start:stop:num'`` (log-spaced) or ``'t1,t2,...'`` as a tuple of thicknesses (A)."""
    import numpy as np

    try:
        if ":" in text:
            start, stop, num = text.split(":")
            return tuple(np.geomspace(float(start), float(stop), int(num)).tolist())
        return tuple(float(t) for t in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"thickness must be 'start:stop:num' or 't1,t2,...', got {text!r}") from err


def _cmd_simulate(args) -> int:
    from .simulation.simulate import generate_training_set
    from .simulation.simulator import example_crystal

    if Path(args.out).exists() and not args.overwrite:
        raise SystemExit(f"error: {args.out} exists; pass --overwrite to replace it")
    if args.cif:
        from .core.crystal import crystal_from_cif

        crystal = crystal_from_cif(args.cif)
    else:
        crystal = example_crystal(args.crystal)
    ts = generate_training_set(
        crystal, accel_voltage=args.accel_voltage, k_max=args.k_max, angle_step_zone_axis=args.angle_step,
        num_zone_axes=args.num_zone_axes, thickness=args.thickness, num_thicknesses=args.num_thicknesses,
        dynamical=not args.kinematic, sigma_excitation_error=args.sigma_excitation_error,
        precession_angle_degrees=args.precession_angle, min_relative_intensity=args.min_relative_intensity,
        seed=args.seed, n_jobs=args.n_jobs, progress_bar=not args.no_progress)
    ts.save(args.out, overwrite=args.overwrite)
    size = Path(args.out).stat().st_size / 1e6
    print(f"{ts}\nsimulated in {ts.info['seconds']:.1f} s; wrote {args.out} ({size:.1f} MB)")
    return 0


def _cmd_train(args) -> int:
    from .model.model import ModelConfig
    from .pretrained import load_model
    from .training.trainer import train
    from .simulation.phases import PhaseTrainingSet
    from .simulation.training_set import TrainingSet

    sets = [TrainingSet.load(path) for path in args.training_set]
    if args.mix:
        from .simulation.mixture import group_by_crystal, mix_training_sets

        groups = group_by_crystal(sets)
        for n, group in enumerate(groups):
            print(f"phase {n}: " + ", ".join(args.training_set[i] for i in group))
        sets = [mix_training_sets([sets[i] for i in group]) for group in groups]
    if args.names and len(sets) == 1:
        raise SystemExit("--names is for a joint phase model: give training sets of two or more crystals")
    training_set = sets[0] if len(sets) == 1 else PhaseTrainingSet(sets, names=args.names.split(",") if args.names else None)
    print(training_set)
    augment_config = _augment_config(args.augment, float(training_set.config.k_max) * K_MAX_MARGIN)
    model_config = None
    if args.d_model or args.layers:
        base = ModelConfig()
        model_config = ModelConfig(d_model=args.d_model or base.d_model, n_layers=args.layers or base.n_layers,
                                   d_ff=4 * (args.d_model or base.d_model),
                                   k_max=float(sets[0].config.k_max) * K_MAX_MARGIN, n_phases=len(sets))
    init = None if args.init is None else load_model(args.init)
    model = train(
        training_set, epochs=args.epochs, max_minutes=args.max_minutes, batch_size=args.batch_size, lr=args.lr,
        device=args.device, checkpoint_dir=args.checkpoint_dir, resume=args.resume, seed=args.seed,
        progress_bar=not args.no_progress, model_config=model_config, precision=args.precision, init_weights=init,
        augment_config=augment_config,
    )
    model.save(args.out)
    h = model.history
    best = min(h["val_median_deg"]) if h.get("val_median_deg") else float("nan")
    print(f"saved {args.out}: {model.num_parameters:,} parameters, {h['step'][-1] if h.get('step') else 0} steps, "
          f"best validation median {best:.2f} deg (held-out zone axes, beam flip allowed)")
    if h.get("val_phase_accuracy"):
        print(f"validation phase accuracy at the end: {h['val_phase_accuracy'][-1]:.2%}")
    if h.get("val_median_deg_by_phase"):
        from .training.trainer import _phase_names

        for i, name in enumerate(_phase_names(model, len(h["val_median_deg_by_phase"][-1]))):
            print(f"  {name} at the end: median {h['val_median_deg_by_phase'][-1][i]:.2f} deg, "
                  f"{h['val_within_5deg_by_phase'][-1][i]:.1%} within 5 deg (beam flip allowed)")
    return 0


def _augment_config(settings, k_max: float):
    """AugmentConfig from ``["p_dim=0.3", ...]`` (the defaults elsewhere); a clear error for unknown names."""
    import dataclasses

    from .training.augment import AugmentConfig

    names = sorted(f.name for f in dataclasses.fields(AugmentConfig) if f.name != "k_max")  # k_max follows the set
    values = {"k_max": k_max}
    for item in settings or []:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise SystemExit(f"--augment {item!r}: expected NAME=VALUE with NAME one of {names}")
        default = getattr(AugmentConfig(), name)
        try:
            values[name] = (value.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(value)
        except ValueError:
            raise SystemExit(f"--augment {item!r}: {value!r} is not a {type(default).__name__}") from None
    return AugmentConfig(**values)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on training-set files (several files: a joint phase model)")
    p.add_argument("training_set", nargs="+",
                   help="HDF5 file(s) from `py4dstem-transformer simulate` or TrainingSet.save; one per phase "
                        "(with --mix, several per phase)")
    p.add_argument("--names", default=None, help="phase names, comma-separated (default: chemical formulas)")
    p.add_argument("--mix", action="store_true",
                   help="the files are crystals simulated under several experiments (beam selections, "
                        "kinematic, precession): the files of one crystal are mixed into one phase "
                        "(simulation.mixture); files of two or more crystals make a joint phase model, "
                        "phases in the order of each crystal's first file")
    p.add_argument("--augment", action="append", metavar="NAME=VALUE",
                   help="change an augmentation setting (training.augment.AugmentConfig), e.g. --augment p_dim=0.3 "
                        "--augment p_edge=0.3; repeat for several")
    p.add_argument("--init", default=None,
                   help="start from this model's weights (a model file or a shipped model's name, e.g. Cu)")
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget (default 30 if no --epochs)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA if available)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    p.add_argument("--checkpoint-dir", default=None, help="write resumable checkpoints here")
    p.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d-model", type=int, default=None, help="model width (default 128)")
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


#: The mapper keywords (config.KEYWORDS) that ``calibrate`` takes as flags (``--search-confidence``, ...); None: the
#: model's present setting.
_CALIBRATE_SETTINGS = ("search_confidence", "search_off_lattice", "sigma_excitation_error", "intensity_noise_power", "intensity_noise_max_disks",
                       "intensity_tie", "acom_tie", "polish_sparse_disks", "polish_min_position_noise", "phase_power")


def _cmd_calibrate(args) -> int:
    from .mapping.calibrate import attach_calibration, calibrate
    from .mapping.mapper import TransformerOrientationMap

    settings = {k: getattr(args, k) for k in _CALIBRATE_SETTINGS if getattr(args, k) is not None}
    mapper = TransformerOrientationMap.from_model(args.model, calibrated_confidence=False, **settings)
    cal = calibrate(mapper, n=args.n, seed=args.seed, damaged_fraction=args.damaged_fraction,
                    progress_bar=not args.no_progress, passes=args.passes, varied_fraction=args.varied_fraction)
    attach_calibration(mapper.model, cal)
    mapper.model.save(args.out)
    info = cal.fitted_on
    print(f"saved {args.out}: confidence calibrated on {info['patterns']} simulated patterns "
          f"({info['fraction_right']:.1%} right, ROC AUC {info['auc_on_fit_set']:.3f} on them), under the library "
          f"search gate search_confidence={mapper.config.search.confidence if mapper.config.search else None}"
          f"{f', search_off_lattice={mapper.config.search.off_lattice}' if mapper.config.search and mapper.config.search.off_lattice < 1 else ''}, "
          f"which mappers of this model now use by default")
    return 0


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a model's confidence (corr = probability of < 5 deg) on simulated patterns")
    p.add_argument("model", help="a model file or a shipped model's name")
    p.add_argument("--out", required=True, help="model file to write (.pt); may be the input file")
    p.add_argument("--n", type=int, default=4000, help="simulated patterns per phase (default 4000)")
    p.add_argument("--seed", type=int, default=1000, help="keep it apart from the benchmarks' seeds 0-199")
    p.add_argument("--damaged-fraction", type=float, default=0.5)
    p.add_argument("--varied-fraction", type=float, default=0.0,
                   help="share of the patterns (taken from the clean ones) simulated under other experiments: "
                        "detector edges, only bright disks, other beam selections, kinematic (default 0; 0.4 "
                        "measured no better, docs/benchmarks.md)")
    p.add_argument("--passes", type=int, default=2,
                   help="fits, each mapping the patterns under the one before (the calibration decides which "
                        "sparse patterns are turned); default 2")
    p.add_argument("--search-confidence", type=float, default=None,
                   help="calibrate under this library-search gate, which the model's mappers then use by default: "
                        "1 searches every pattern (slower; more often right on non-cubic crystals, where a "
                        "confident answer can be the beam flip: docs/benchmarks.md 'Crystal systems'); default: "
                        "the model's present setting (0.95 for a new model)")
    p.add_argument("--search-off-lattice", type=float, default=None,
                   help="calibrate with the library search also on every sure pattern whose answer leaves more than "
                        "this share of its disks off its lattice (SearchConfig.off_lattice: false disks from a disk "
                        "finder, or a twin of the truth; costs nothing on clean patterns), which the model's mappers "
                        "then use by default; 1: never; default: the model's present setting (1 for a new model)")
    p.add_argument("--sigma-excitation-error", type=float, default=None,
                   help="calibrate under this excitation-error width of the score (1/A), which the model's mappers "
                        "then use by default; default: the model's present setting (0.03 for a new model, 0.04 "
                        "for one calibrated before 2026-12-02)")
    p.add_argument("--intensity-noise-power", type=float, default=None,
                   help="calibrate under this weighting of the refinement's intensities (RefineConfig."
                        "intensity_noise_power: 1 trusts them less where the disks are precisely placed, 0 always "
                        "as before), which the model's mappers then use by default; default: the model's present "
                        "setting")
    p.add_argument("--intensity-noise-max-disks", type=int, default=None,
                   help="with --intensity-noise-power: weigh that way only candidates with at most this many disks "
                        "assigned (0: all); default: the model's present setting")
    p.add_argument("--intensity-tie", type=float, default=None,
                   help="calibrate with the arbitrate stage on (ArbiterConfig.tie): a best candidate's distinct rival "
                        "scoring within this of it is ranked first where its intensity profile fits the disks better "
                        "(0: off); the model's mappers then use it by default; default: the model's present setting")
    p.add_argument("--acom-tie", type=float, default=None,
                   help="calibrate with the tiebreak stage on (TieBreakConfig.tie): a best candidate's distinct rival "
                        "scoring within this of it is ranked first where a second correlation with ACOM's settings "
                        "scores it higher (0: off); the model's mappers then use it by default; default: the model's "
                        "present setting")
    p.add_argument("--polish-sparse-disks", type=int, default=None,
                   help="calibrate with the polish (the pattern search on the score) on every pattern with at most "
                        "this many disks (PolishConfig.sparse_disks; 0: off), which the model's mappers then use by "
                        "default; default: the model's present setting")
    p.add_argument("--polish-min-position-noise", type=float, default=None,
                   help="calibrate with the polish on every pattern whose disks the refinement fits no better than "
                        "this (1/A; PolishConfig.min_position_noise); default: the model's present setting")
    p.add_argument("--phase-power", type=float, default=None,
                   help="calibrate with each phase's corr weighed by (its phase probability / the network's favourite's) "
                        "** this (MapConfig.phase_power; 1: as the network says, below 1: the disks' fit can overrule "
                        "a network sure of the wrong phase); the model's mappers then use it by default; default: the "
                        "model's present setting")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_combine(args) -> int:
    from .mapping.config import MapConfig, calibrated_config, config_differences
    from .mapping.confidence import METADATA_KEY
    from .model.experts import with_experts
    from .pretrained import load_model

    joint = load_model(args.joint)
    experts = {}
    for item in args.expert:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise SystemExit(f"--expert {item!r}: write PHASE=MODEL, e.g. --expert Cu2O=cu2o.pt")
        experts[name] = load_model(source)
    model = with_experts(joint, experts)
    model.save(args.out)
    for name, entry in zip((p["name"] for p in model.metadata["phases"]), model.metadata["experts"]):
        if entry is None:
            print(f"phase {name}: the joint network's own orientation")
        else:
            print(f"phase {name}: an expert of {entry['parameters']:,} parameters, {entry['steps']} steps, "
                  f"best validation median {entry['best_validation_median_deg'] or float('nan'):.2f} deg")
    print(f"saved {args.out}: {model.num_parameters:,} parameters in all; it has no confidence calibration and no "
          f"voltage validation yet: run `py4dstem-transformer calibrate {args.out} --out {args.out}` and "
          f"`validate-voltages` on it")
    fitted = ((joint.metadata.get(METADATA_KEY) or {}).get("fitted_on") or {}).get("map_config")
    if fitted is not None:
        changed = config_differences(MapConfig().to_dict(), calibrated_config(fitted).to_dict())
        if changed:
            print("the joint model was calibrated under these settings (calibrate takes them as flags): "
                  + "; ".join(changed))
    return 0


def _add_combine(sub) -> None:
    p = sub.add_parser("combine", help="give phases of a joint phase model an orientation network of their own (an "
                                       "expert, trained on that phase alone)")
    p.add_argument("joint", help="the joint phase model (a model file or a shipped model's name); it names the phase "
                                 "and reads the orientation of the phases without an expert")
    p.add_argument("--expert", action="append", required=True, metavar="PHASE=MODEL",
                   help="a phase's name and its single-phase model (a file or a shipped model's name); repeat for "
                        "several: --expert Cu2O=cu2o.pt --expert Cu=Cu")
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.set_defaults(func=_cmd_combine)


def _cmd_validate_voltages(args) -> int:
    from .mapping.mapper import TransformerOrientationMap
    from .mapping.voltages import attach_validation, validate_voltages

    mapper = TransformerOrientationMap.from_model(args.model)
    kv = [float(v) for v in args.kv.split(",") if v.strip()]
    result = validate_voltages(mapper, kv, n=args.n, seed=args.seed, tolerance=args.tolerance,
                               progress_bar=not args.no_progress)
    for phase_row, v in zip(result["strict_per_phase"], result["kv"]):
        print(f"{v:g} kV: strict <= 5 deg " + ", ".join(f"{s:.1%}" for s in phase_row))
    low, high = (r / 1e3 for r in result["range"])
    attach_validation(mapper.model, result)
    mapper.model.save(args.out)
    print(f"saved {args.out}: accepts {low:g}-{high:g} kV (within {args.tolerance:.0%} of its training voltage's "
          f"accuracy, {args.n} patterns per voltage and phase)")
    return 0


def _add_validate_voltages(sub) -> None:
    p = sub.add_parser("validate-voltages", help="measure at which voltages a model maps as well as at its own, "
                                                 "and store the range it accepts in the model file")
    p.add_argument("model", help="a model file or a shipped model's name")
    p.add_argument("--out", required=True, help="model file to write (.pt); may be the input file")
    p.add_argument("--kv", default="60,80,120,200,300", help="voltages in kV, comma-separated (default 60,80,120,200,300)")
    p.add_argument("--n", type=int, default=300, help="random orientations per voltage and phase (default 300)")
    p.add_argument("--seed", type=int, default=3000, help="keep it apart from the benchmarks' and calibration's seeds")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="accept voltages at most this much below the training voltage's strict accuracy (default 0.02)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_validate_voltages)


def _cmd_demo(args) -> int:
    from .evaluation.demo import run_demo

    run_demo(size=args.size, num_grains=args.grains, out=args.out, acom=not args.no_acom, seed=args.seed,
             progress_bar=not args.no_progress)
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="map a simulated Cu polycrystal with the shipped model and with ACOM, side by side")
    p.add_argument("--size", type=int, default=32, help="scan is SIZE x SIZE positions (default 32)")
    p.add_argument("--grains", type=int, default=12, help="number of grains (default 12)")
    p.add_argument("--out", default="demo_out", help="folder for the PNGs (default demo_out)")
    p.add_argument("--no-acom", action="store_true", help="skip py4DSTEM's ACOM (~30 ms per pattern)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _add_bench(sub) -> None:
    """``bench``; options left unset (None) take :class:`~.benchmarks.bench.BenchConfig`'s defaults."""
    p = sub.add_parser("bench", help="ACOM vs the transformer on the same simulated scans: speed, stages, "
                                     "accuracy, file path; JSON, markdown and plots")
    p.add_argument("--sizes", default=None, help="scan sides N, comma-separated (default 8,16,...,1024)")
    p.add_argument("--acom-max", type=int, default=None,
                   help="ACOM on at most this many positions per scan; beyond, a random subset, extrapolated")
    p.add_argument("--model", default=None, help="a pretrained name or a model file (default Cu)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    p.add_argument("--grains", type=int, default=None, help="grains per scan (default: one per 256 positions, 4-1024)")
    p.add_argument("--file-min-size", type=int, default=None, help="measure the file path from this scan side up")
    p.add_argument("--no-file", action="store_true", help="skip the file path")
    p.add_argument("--no-refine", action="store_true", help="transformer with refine=False")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quantem-python", default=None,
                   help="Python of an environment with quantem (numpy >= 2): quantem maps ACOM's positions too")
    p.add_argument("--out", default="bench_out", help="folder for bench.json, bench.md and bench_*.png")
    p.add_argument("--update-docs", action="store_true",
                   help="also rewrite the bench section of --docs and its images/bench_*.png")
    p.add_argument("--docs", default="docs/benchmarks.md", help="the markdown file --update-docs rewrites")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_bench)


#: ``bench`` options that are fields of ``BenchConfig`` of the same name (dashes for underscores)
_BENCH_FIELDS = ("model", "device", "precision", "grains", "threads", "file_min_size", "seed", "quantem_python")


def _cmd_bench(args) -> int:
    from .benchmarks.bench import BenchConfig, run_and_write  # the library's only way into benchmarks/

    config = _bench_config(args, BenchConfig)
    paths = run_and_write(config, args.out, docs=args.docs if args.update_docs else None,
                          command=_bench_command_line(args, config, BenchConfig()))
    print(f"\nwrote {paths['json']}, {paths['markdown']} and {len(paths['figures'])} figures"
          + (f"; updated {paths['docs']}" if "docs" in paths else ""))
    return 0


def _bench_config(args, config_class):
    """The ``config_class`` (``BenchConfig``) the options ask for; unset options keep its defaults."""
    given = {name: getattr(args, name) for name in _BENCH_FIELDS + ("acom_max",)}
    given["sizes"] = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
    config = config_class(**{k: v for k, v in given.items() if v is not None}, refine=not args.no_refine,
                          progress_bar=not args.no_progress)
    return config if not args.no_file else replace(config, file_min_size=None)


def _bench_command_line(args, config, default) -> str:
    """The command as the outputs quote it: sizes and ACOM positions always, other options where they differ
    from ``default`` (a default ``BenchConfig``)."""
    parts = ["py4dstem-transformer bench", f"--sizes {','.join(map(str, config.sizes))}",
             f"--acom-max {config.acom_max}"]
    for name in _BENCH_FIELDS:
        value = getattr(args, name)
        if value is not None and value != getattr(default, name):
            parts.append(f"--{name.replace('_', '-')} {value}")
    parts.append(f"--out {args.out}")
    flags = {"--no-file": args.no_file, "--no-refine": args.no_refine, "--update-docs": args.update_docs}
    return " ".join(parts + [k for k, on in flags.items() if on])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="py4dstem-transformer",
        description="Crystal orientation maps from 4D-STEM Bragg disks with a transformer.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show Python's traceback for an error instead of its one-line message "
                             "(before the command: py4dstem-transformer --traceback train ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, device and whether bf16 is fast here")
    info.set_defaults(func=_cmd_info)
    _add_demo(sub)
    _add_simulate(sub)
    _add_train(sub)
    _add_combine(sub)
    _add_calibrate(sub)
    _add_validate_voltages(sub)
    _add_bench(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command (``argv`` as on the command line; default ``sys.argv[1:]``); errors propagate as
    exceptions (argparse's usage errors as ``SystemExit(2)``). The installed command is :func:`console`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


#: Errors whose message tells a user what to fix (a file that is missing, damaged or of another kind, a
#: setting out of range, an unknown name). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)


def console(argv: Optional[Sequence[str]] = None) -> int:
    """The installed ``py4dstem-transformer`` command (and ``python -m py4dstem_transformer``): :func:`main`,
    with a user's errors as ``py4dstem-transformer: error: <message>`` on stderr and exit status 1 (130 when
    interrupted) instead of a traceback. ``--traceback`` (or ``PY4DSTEM_TRANSFORMER_TRACEBACK=1``) re-raises."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show = "--traceback" in argv or os.environ.get("PY4DSTEM_TRANSFORMER_TRACEBACK", "") not in ("", "0")
    try:
        return main(argv)
    except KeyboardInterrupt:
        if show:
            raise
        print("py4dstem-transformer: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if show:
            raise
        print(f"py4dstem-transformer: error: {err}\n(py4dstem-transformer --traceback ... shows where it "
              f"happened)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
