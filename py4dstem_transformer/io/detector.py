"""Detector calibration of Bragg vectors: raw detector pixels -> lab-frame (qx, qy) in 1/A.

The transform is py4DSTEM's (``BraggVectors.cal``), applied to whole flat peak arrays at once:

1. subtract the origin ``(qx0, qy0)`` (pixels; a scalar or one value per scan position),
2. correct the ellipse ``(a, b, theta)`` if calibrated,
3. multiply by the Q pixel size (1/A per pixel),
4. rotate by the QR rotation (and swap qx, qy first if ``QR_flip``), if calibrated;
5. apply a lab-frame correction ``q -> C q`` (a 2 x 2 matrix), if one was measured: the mapper's
   self-calibration (:mod:`~py4dstem_transformer.mapping.selfcal`) fits it to the crystal's own disks
   when the Q pixel size or the ellipse is off.

As in ``crystal.match_orientations``, origin and pixel size are always required; ellipse and
rotation are applied when the BraggVectors' ``calstate`` says so.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ..core.rotations import rotate_xy

__all__ = ["DetectorCalibration"]

ArrayOrFloat = Union[float, np.ndarray]

_FIX_ORIGIN = (
    "set it with bragg_peaks.calibration.set_origin((qx0, qy0)) (pixels), or measure it with "
    "bragg_peaks.measure_origin() and bragg_peaks.fit_origin()"
)
_FIX_PIXEL = (
    "set it with bragg_peaks.calibration.set_Q_pixel_size(size_in_inverse_angstrom) and "
    "bragg_peaks.calibration.set_Q_pixel_units('A^-1'), or fit it with crystal.calibrate_pixel_size(bragg_peaks)"
)


@dataclass(frozen=True)
class DetectorCalibration:
    """Everything needed to turn raw detector positions into lab (qx, qy) in 1/A.

    Attributes
    ----------
    origin : (qx0, qy0)
        Direct-beam position in detector pixels: floats, or (Rx, Ry) arrays, one per position.
    q_pixel_size : float
        1/A per detector pixel.
    ellipse : (a, b, theta) or None
        Elliptical distortion as py4DSTEM stores it (floats or (Rx, Ry) arrays); None = none.
    qr_rotation : float or None
        Rotation (radians) from detector to scan frame; None = not applied.
    qr_flip : bool
        Swap qx and qy before rotating (py4DSTEM ``QR_flip``).
    correction : ((c00, c01), (c10, c11)) or None
        Lab-frame linear correction applied last, ``(qx, qy) -> C (qx, qy)``; None = none. Not a py4DSTEM
        calibration: the mapper's self-calibration sets it on a copy (never on the user's Bragg vectors).
    """

    origin: Tuple[ArrayOrFloat, ArrayOrFloat]
    q_pixel_size: float
    ellipse: Optional[Tuple[ArrayOrFloat, ArrayOrFloat, ArrayOrFloat]] = None
    qr_rotation: Optional[float] = None
    qr_flip: bool = False
    correction: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None

    @classmethod
    def from_py4dstem(cls, calibration, calstate: Optional[dict] = None) -> "DetectorCalibration":
        """Read a py4DSTEM ``Calibration`` (``bragg_peaks.calibration``).

        ``calstate`` (``bragg_peaks.calstate``) decides whether the ellipse and the rotation are
        applied, exactly as ``match_orientations`` does; ``None`` applies whatever is calibrated.

        Raises
        ------
        ValueError
            If the origin or the Q pixel size is missing, naming the py4DSTEM call that sets it.
        """
        if calibration is None:
            raise ValueError(f"these Bragg vectors carry no calibration: the origin is missing; {_FIX_ORIGIN}")
        origin = calibration.get_origin()
        if origin is None:
            raise ValueError(f"the Bragg vectors have no origin (direct-beam position) calibration; {_FIX_ORIGIN}")
        q_pixel_size = _q_pixel_size(calibration)
        state = calstate or {}
        ellipse = calibration.get_ellipse() if state.get("ellipse", True) else None
        rotation = calibration.get_QR_rotation() if state.get("rotate", True) else None
        flip = bool(calibration.get_QR_flip() or False) if rotation is not None else False
        origin = tuple(_as_float_or_array(v) for v in origin)
        if ellipse is not None:
            ellipse = tuple(_as_float_or_array(v) for v in ellipse)
        return cls(origin, q_pixel_size, ellipse, None if rotation is None else float(rotation), flip)

    def apply(
        self, qx: torch.Tensor, qy: torch.Tensor, counts: torch.Tensor, start: int = 0
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Calibrate the raw peaks of consecutive scan positions.

        Parameters
        ----------
        qx, qy : (P,) tensors
            Raw detector positions (pixels), position after position.
        counts : (B,) int64 tensor
            Peaks per position, for the positions ``start ... start + B - 1`` (flat, C order).
        start : int
            Flat index of the first position (per-position calibration values are looked up).

        Returns
        -------
        qx, qy : (P,) tensors in 1/A, lab frame, same dtype as the input.
        """
        where = (start, counts)
        qx = qx - self._per_peak(self.origin[0], where, qx)
        qy = qy - self._per_peak(self.origin[1], where, qy)
        if self.ellipse is not None:
            qx, qy = self._correct_ellipse(qx, qy, where)
        qx, qy = qx * self.q_pixel_size, qy * self.q_pixel_size
        if self.qr_rotation is not None:
            if self.qr_flip:
                qx, qy = qy, qx
            qx, qy = rotate_xy(qx, qy, float(self.qr_rotation))
        if self.correction is not None:
            (c00, c01), (c10, c11) = self.correction
            qx, qy = c00 * qx + c01 * qy, c10 * qx + c11 * qy
        return qx, qy

    def positions(self, start: int, stop: int) -> "DetectorCalibration":
        """The calibration of the flat scan positions ``start ... stop - 1`` alone (per-position values
        sliced, so that position ``start`` becomes position 0)."""

        def cut(value):
            return value if np.ndim(value) == 0 else np.asarray(value).reshape(-1)[start:stop]

        origin = tuple(cut(v) for v in self.origin)
        ellipse = None if self.ellipse is None else tuple(cut(v) for v in self.ellipse)
        return dataclasses.replace(self, origin=origin, ellipse=ellipse)

    @classmethod
    def identity(cls) -> "DetectorCalibration":
        """For peaks already in 1/A about the direct beam: origin 0, pixel size 1, nothing else."""
        return cls((0.0, 0.0), 1.0)

    def _correct_ellipse(self, qx, qy, where):
        a, b, theta = (self._per_peak(v, where, qx) for v in self.ellipse)
        e = b / a
        sin, cos = torch.sin(theta - np.pi / 2), torch.cos(theta - np.pi / 2)
        t00, t01, t11 = e * sin**2 + cos**2, sin * cos * (1 - e), sin**2 + e * cos**2
        return t00 * qx + t01 * qy, t01 * qx + t11 * qy

    @staticmethod
    def _per_peak(value: ArrayOrFloat, where, like: torch.Tensor):
        """A scalar, or the per-position values repeated over each position's peaks."""
        if np.ndim(value) == 0:
            return torch.as_tensor(float(value), dtype=like.dtype, device=like.device)
        start, counts = where
        flat = np.asarray(value).reshape(-1)[start : start + len(counts)]
        flat = torch.as_tensor(flat, dtype=like.dtype, device=like.device)
        return torch.repeat_interleave(flat, counts, output_size=len(like))


def _q_pixel_size(calibration) -> float:
    size = calibration.get_Q_pixel_size()
    units = calibration.get_Q_pixel_units()
    if size is None or (units == "pixels" and size == 1):
        raise ValueError(f"the Bragg vectors have no Q pixel size calibration (1/A per pixel); {_FIX_PIXEL}")
    if units == "mrad":
        raise ValueError(
            "the Q pixel size is in mrad but the model works in 1/A; convert it "
            "(size_in_inverse_angstrom = size_in_mrad / (1000 * wavelength_in_angstrom)) and "
            f"{_FIX_PIXEL}"
        )
    if units == "pixels":
        warnings.warn(
            f"Q pixel size {size} is set but its units are still 'pixels'; assuming 1/A. "
            "Set bragg_peaks.calibration.set_Q_pixel_units('A^-1') to silence this.",
            stacklevel=3,
        )
    size = float(size)
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"the Q pixel size must be a positive number of 1/A per pixel, got {size}; {_FIX_PIXEL}")
    return size


def _as_float_or_array(value) -> ArrayOrFloat:
    arr = np.asarray(value, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else arr
