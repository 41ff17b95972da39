"""Command line: ``py4dstem-transformer`` (also ``python -m py4dstem_transformer``).

Each subcommand is a small ``_cmd_*`` function registered in :func:`build_parser`; heavy imports
happen inside the function that needs them, so ``--help`` and ``info`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from typing import Optional, Sequence

from ._version import __version__

__all__ = ["main", "build_parser", "environment_info"]


def environment_info() -> dict:
    """Versions and hardware facts that decide how (and how fast) the package runs here."""
    import numpy
    import torch

    from .device import cpu_has_fast_bf16, resolve_device

    info = {
        "py4dstem_transformer": __version__,
        "python": platform.python_version(),
        "py4DSTEM": _version_of("py4DSTEM"),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pymatgen": _version_of("pymatgen"),
        "orix": _version_of("orix"),
        "device": str(resolve_device()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
    }
    return info


def _version_of(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed (PackageNotFoundError) or broken metadata
        try:
            return getattr(importlib.import_module(module), "__version__", "unknown")
        except ImportError:
            return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="py4dstem-transformer",
        description="Crystal orientation maps from 4D-STEM Bragg disks with a transformer.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, device and whether bf16 is fast here")
    info.set_defaults(func=_cmd_info)
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
