"""The default experiment, stated once: every config, simulator and command takes its defaults from here.

Changing a value here changes the defaults of newly made training sets, models and scans; saved files
keep the values they were made with (they are stored in every config).
"""

from __future__ import annotations

__all__ = ["ACCEL_VOLTAGE", "K_MAX", "K_MAX_MARGIN"]

#: Accelerating voltage (V): 300 kV.
ACCEL_VOLTAGE = 300e3
#: Outer radius (1/A) of the reflections simulated and stored in a training set (and of a scan's disks).
K_MAX = 2.1
#: A model reads disks out to ``K_MAX_MARGIN`` x its training set's ``k_max``: the tokens' and the network's
#: radial range, with room for disks that calibration errors and jitter push past the simulated edge.
K_MAX_MARGIN = 1.05
