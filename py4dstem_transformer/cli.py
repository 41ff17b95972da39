"""Command line: ``py4dstem-transformer`` (also ``python -m py4dstem_transformer``).

Each subcommand is a small ``_cmd_*`` function registered in :func:`build_parser`; heavy imports
happen inside the function that needs them, so ``--help`` and ``info`` start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ._version import __version__
from .core.device import environment_info
from .benchmarks.bench import add_bench_command
from .simulation.simulate import add_simulate_command

__all__ = ["main", "build_parser"]


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


def _cmd_train(args) -> int:
    from .model.model import ModelConfig
    from .training.trainer import train
    from .simulation.phases import PhaseTrainingSet
    from .simulation.training_set import TrainingSet

    sets = [TrainingSet.load(path) for path in args.training_set]
    training_set = sets[0] if len(sets) == 1 else PhaseTrainingSet(sets, names=args.names.split(",") if args.names else None)
    print(training_set)
    model_config = None
    if args.d_model or args.layers:
        base = ModelConfig()
        model_config = ModelConfig(d_model=args.d_model or base.d_model, n_layers=args.layers or base.n_layers,
                                   d_ff=4 * (args.d_model or base.d_model), k_max=float(sets[0].config.k_max) * 1.05,
                                   n_phases=len(sets))
    init = args.init
    if init is not None and not Path(init).exists():
        from .pretrained import pretrained_path

        init = pretrained_path(init)  # a shipped model's name
    model = train(
        training_set, epochs=args.epochs, max_minutes=args.max_minutes, batch_size=args.batch_size, lr=args.lr,
        device=args.device, checkpoint_dir=args.checkpoint_dir, resume=args.resume, seed=args.seed,
        progress_bar=not args.no_progress, model_config=model_config, precision=args.precision, init_weights=init,
    )
    model.save(args.out)
    h = model.history
    best = min(h["val_median_deg"]) if h.get("val_median_deg") else float("nan")
    print(f"saved {args.out}: {model.num_parameters:,} parameters, {h['step'][-1] if h.get('step') else 0} steps, "
          f"best validation median {best:.2f} deg (held-out zone axes, beam flip allowed)")
    if h.get("val_phase_accuracy"):
        print(f"validation phase accuracy at the end: {h['val_phase_accuracy'][-1]:.2%}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on training-set files (several files: a joint phase model)")
    p.add_argument("training_set", nargs="+",
                   help="HDF5 file(s) from `py4dstem-transformer simulate` or TrainingSet.save; one per phase")
    p.add_argument("--names", default=None, help="phase names, comma-separated (default: chemical formulas)")
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


def _cmd_calibrate(args) -> int:
    from .mapping.confidence import attach_calibration, calibrate
    from .mapping.mapper import TransformerOrientationMap

    mapper = TransformerOrientationMap.from_model(args.model)
    cal = calibrate(mapper, n=args.n, seed=args.seed, damaged_fraction=args.damaged_fraction,
                    progress_bar=not args.no_progress, passes=args.passes)
    attach_calibration(mapper.model, cal)
    mapper.model.save(args.out)
    info = cal.fitted_on
    print(f"saved {args.out}: confidence calibrated on {info['patterns']} simulated patterns "
          f"({info['fraction_right']:.1%} right, ROC AUC {info['auc_on_fit_set']:.3f} on them)")
    return 0


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a model's confidence (corr = probability of < 5 deg) on simulated patterns")
    p.add_argument("model", help="a model file or a shipped model's name")
    p.add_argument("--out", required=True, help="model file to write (.pt); may be the input file")
    p.add_argument("--n", type=int, default=4000, help="simulated patterns per phase (default 4000)")
    p.add_argument("--seed", type=int, default=1000, help="keep it apart from the benchmarks' seeds 0-199")
    p.add_argument("--damaged-fraction", type=float, default=0.5)
    p.add_argument("--passes", type=int, default=2,
                   help="fits, each mapping the patterns under the one before (the calibration decides which "
                        "sparse patterns are turned); default 2")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_calibrate)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="py4dstem-transformer",
        description="Crystal orientation maps from 4D-STEM Bragg disks with a transformer.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, device and whether bf16 is fast here")
    info.set_defaults(func=_cmd_info)
    _add_demo(sub)
    add_simulate_command(sub)
    _add_train(sub)
    _add_calibrate(sub)
    add_bench_command(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
