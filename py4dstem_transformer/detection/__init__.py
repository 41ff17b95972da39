"""Bragg disk detection, batched in torch: py4DSTEM's ``find_Bragg_disks``, many patterns at a time.

Pipeline (one file each): :mod:`.correlate` (FFT correlation with the probe, Gaussian smoothing) ->
:mod:`.maxima` (local maxima, py4DSTEM's filters) -> :mod:`.subpixel` (poly, multicorr) -> :mod:`.detect`
(one batch) -> :mod:`.finder` (the scan in chunks, py4DSTEM containers). Settings: :mod:`.config`.
"""

from .config import DiskDetectionConfig
from .finder import find_bragg_disks

__all__ = ["DiskDetectionConfig", "find_bragg_disks"]
