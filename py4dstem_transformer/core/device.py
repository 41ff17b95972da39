"""Device and precision choices, made in one place.

The package runs one code path on any torch device; what differs is the autocast dtype:
bf16 on CUDA and on CPUs with native bf16 matrix units (AMX or AVX-512-BF16), fp32 elsewhere.
:func:`environment_info` reports these facts (``py4dstem-transformer info``, the benchmarks' outputs).
"""

from __future__ import annotations

import functools
import importlib
import platform
from typing import Optional, Union

import torch

__all__ = ["resolve_device", "cpu_has_fast_bf16", "autocast_dtype", "autocast", "environment_info"]


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` picks CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True if this CPU multiplies bf16 matrices natively (Intel AMX-BF16 or AVX-512-BF16)."""
    flags = _cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def _cpu_flags() -> set:
    flags = _cpuinfo_field("flags")
    return set(flags.split()) if flags is not None else set()


def _cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def _cpuinfo_field(name: str) -> Optional[str]:
    """The value of the first ``name : value`` line of ``/proc/cpuinfo``; None where there is none (or no file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def autocast_dtype(device: Union[str, torch.device], precision: Optional[str] = None) -> Optional[torch.dtype]:
    """The autocast dtype for ``device``: ``torch.bfloat16`` or ``None`` (plain fp32).

    ``precision`` forces a choice: ``"bf16"`` or ``"fp32"``; ``None`` picks bf16 where it is fast.
    """
    if precision not in (None, "bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16', 'fp32' or None, got {precision!r}")
    if precision == "fp32":
        return None
    device = torch.device(device)
    if precision == "bf16" or device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return None


def autocast(device: Union[str, torch.device], dtype: Optional[torch.dtype]):
    """A ``torch.autocast`` context for ``device`` (disabled when ``dtype`` is None)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def environment_info() -> dict:
    """Versions and hardware facts that decide how (and how fast) the package runs here."""
    import numpy

    from .._version import __version__

    return {
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


def _version_of(module: str) -> Optional[str]:
    """The installed distribution's version; the module's ``__version__`` without metadata; None if absent."""
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed (PackageNotFoundError) or broken metadata
        try:
            return getattr(importlib.import_module(module), "__version__", "unknown")
        except ImportError:
            return None
