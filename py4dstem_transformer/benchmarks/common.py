"""Helpers the benchmark commands share: loading a model, timing, random subsets of a scan.

Times are wall-clock seconds from :func:`time.perf_counter`.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Tuple

import numpy as np

__all__ = ["load_mapper", "timed", "random_positions", "subset_braggvectors"]


def load_mapper(model: str = "Cu", device=None, precision: Optional[str] = None):
    """A fresh ``TransformerOrientationMap`` for a pretrained name or a model file, with its own crystal(s)."""
    from ..mapping.mapper import TransformerOrientationMap

    return TransformerOrientationMap.from_model(model, device=device, precision=precision)


def timed(fn: Callable, *args, **kwargs) -> Tuple[object, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def random_positions(num_positions: int, n: int, seed: int = 0) -> np.ndarray:
    """(min(n, num_positions),) sorted flat scan indices drawn without replacement."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_positions, size=min(n, num_positions), replace=False))


def subset_braggvectors(bragg, pick: np.ndarray):
    """A (1, len(pick)) ``BraggVectors`` holding the positions ``pick`` (flat C-order indices) of ``bragg``.

    Raw vectors, per-position origin and Q pixel size are carried over, so the subset is mapped
    exactly as those positions of the full scan would be.
    """
    from ..io.peaks import Peaks, peaks_from_braggvectors, peaks_to_braggvectors

    peaks = peaks_from_braggvectors(bragg)
    o = peaks.offsets
    rows = [np.stack([peaks.qx[o[i]:o[i + 1]], peaks.qy[o[i]:o[i + 1]], peaks.intensity[o[i]:o[i + 1]]], 1) for i in pick]
    origin = tuple(np.broadcast_to(np.asarray(v), peaks.scan_shape).reshape(-1)[pick].reshape(1, -1)
                   for v in peaks.calibration.origin)
    return peaks_to_braggvectors(Peaks.from_lists(rows, (1, len(pick))), tuple(bragg.Qshape), origin,
                                 peaks.calibration.q_pixel_size)
