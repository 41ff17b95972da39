"""Device and precision choices, made in one place.

The package runs one code path on any torch device; what differs is the autocast dtype:
bf16 on CUDA and on CPUs with native bf16 matrix units (AMX or AVX-512-BF16), fp32 elsewhere.
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import torch

__all__ = ["resolve_device", "cpu_has_fast_bf16", "autocast_dtype", "autocast"]


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
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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
