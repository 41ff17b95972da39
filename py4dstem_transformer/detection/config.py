"""Settings of the batched disk finder: py4DSTEM's ``find_Bragg_disks`` keywords, names and defaults included."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import Optional

__all__ = ["DiskDetectionConfig", "SUBPIXEL_MODES"]

#: Sub-pixel methods, as py4DSTEM names them ("none" is py4DSTEM's alias for "pixel").
SUBPIXEL_MODES = ("pixel", "none", "poly", "multicorr")


@dataclass(frozen=True)
class DiskDetectionConfig:
    """What ``datacube.find_Bragg_disks`` takes, with its defaults (py4DSTEM 0.14.18).

    Units are detector pixels, intensities are correlation heights (the patterns' counts times the
    template's sum). See py4DSTEM's docstring for each; the one difference is ``subpixel="none"``,
    read here as ``"pixel"`` (py4DSTEM 0.14.18 documents "none" but only accepts "pixel").
    """

    corrPower: float = 1.0
    sigma_dp: float = 0.0
    sigma_cc: float = 2.0
    subpixel: str = "multicorr"
    upsample_factor: int = 16
    minAbsoluteIntensity: float = 0.0
    minRelativeIntensity: float = 0.005
    relativeToPeak: int = 0
    minPeakSpacing: float = 60.0
    edgeBoundary: int = 20
    maxNumPeaks: Optional[int] = 70

    def __post_init__(self):
        def number(name, low=None, high=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Real) or v != v:
                raise ValueError(f"{name} must be a number, got {v!r}")
            if (low is not None and v < low) or (high is not None and v > high):
                raise ValueError(f"{name} must be in [{low}, {high}], got {v!r}")

        def integer(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Integral) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")

        number("corrPower", 0, 1)
        number("sigma_dp", 0)
        number("sigma_cc", 0)
        number("minAbsoluteIntensity")
        number("minRelativeIntensity", 0)
        number("minPeakSpacing", 0)
        integer("relativeToPeak", 0)
        integer("edgeBoundary", 0)
        if self.maxNumPeaks is not None:
            integer("maxNumPeaks", 0)
        if self.subpixel not in SUBPIXEL_MODES:
            raise ValueError(f"subpixel must be one of {SUBPIXEL_MODES}, got {self.subpixel!r}")
        if self.subpixel == "multicorr":
            integer("upsample_factor", 3)

    def to_dict(self) -> dict:
        return asdict(self)
